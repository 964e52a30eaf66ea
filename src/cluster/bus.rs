//! NATS subjects and headers of the bus. Pure: names in, subjects and routes out.
//!
//! | subject | subscribers | meaning |
//! |---|---|---|
//! | `c10m.node.<node_id>` | that node | deliver to the user named in `C10m-User` |
//! | `c10m.topic.<topic>` | every node (`c10m.topic.>`) | deliver to the topic's subscribers |
//! | `c10m.all` | every node | deliver to every client |
//! | `c10m.user.<user>` | one node (queue group `c10m`) | look the user up, forward to its nodes |
//! | `c10m.cmd` | every node | a command on a user's connections |
//! | `c10m.presence` | every node | a presence request; each node replies ([`super::presence`]) |
//!
//! A topic or user whose name is not a valid subject tail (empty tokens, whitespace, `*`,
//! `>`) travels in the `C10m-Topic` / `C10m-User` header on `c10m.topic._` / `c10m.user._`;
//! the header wins over the subject. `C10m-Origin` names the node that accepted a publish
//! (nodes skip their own topic and broadcast messages: they delivered them locally);
//! `C10m-Id` carries the accepting node's message id so every node shows clients the same id.
#![forbid(unsafe_code)]

pub const NODE_PREFIX: &str = "c10m.node.";
pub const TOPIC_PREFIX: &str = "c10m.topic.";
pub const TOPIC_WILDCARD: &str = "c10m.topic.>";
pub const ALL: &str = "c10m.all";
pub const USER_PREFIX: &str = "c10m.user.";
pub const USER_WILDCARD: &str = "c10m.user.>";
/// Queue group of `c10m.user.>`: one node of the cluster takes each backend publish.
pub const USER_QUEUE: &str = "c10m";
/// Commands on a user's connections, to every node: a JSON payload
/// `{"user":U,"cmd":"disconnect"|"subscribe"|"unsubscribe","topic":T,"reason":R,"ban_s":N}`
/// (see [`crate::push::Command::from_json`]); a backend may publish here too.
pub const CMD: &str = "c10m.cmd";
/// Presence requests, to every node: each replies on the request's reply subject with its
/// own counts (see [`super::presence`]); a backend may send them too.
pub const PRESENCE: &str = "c10m.presence";
/// Subject tail used when the name travels in a header instead.
pub const IN_HEADER: &str = "_";

pub const H_ORIGIN: &str = "C10m-Origin";
pub const H_ID: &str = "C10m-Id";
pub const H_USER: &str = "C10m-User";
pub const H_TOPIC: &str = "C10m-Topic";

/// Whether `name` can be the tail of a subject: dot-separated non-empty tokens without
/// whitespace, control bytes or wildcards.
pub fn valid_tail(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|t| {
            !t.is_empty() && t.bytes().all(|b| b > b' ' && b != b'*' && b != b'>' && b != 0x7f)
        })
}

/// Whether `name` can travel as a NATS header value (no control bytes, which would end it).
pub fn valid_header(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b >= b' ' && b != 0x7f)
}

pub fn node_subject(node_id: &str) -> String {
    format!("{NODE_PREFIX}{node_id}")
}

/// The subject for `topic`, and whether the name must go in `C10m-Topic` as well.
pub fn topic_subject(topic: &str) -> (String, bool) {
    if valid_tail(topic) {
        (format!("{TOPIC_PREFIX}{topic}"), false)
    } else {
        (format!("{TOPIC_PREFIX}{IN_HEADER}"), true)
    }
}

/// The subject for a publish to `user`, and whether the name must go in `C10m-User` too.
pub fn user_subject(user: &str) -> (String, bool) {
    if valid_tail(user) {
        (format!("{USER_PREFIX}{user}"), false)
    } else {
        (format!("{USER_PREFIX}{IN_HEADER}"), true)
    }
}

/// What a message from the bus asks for, by its subject.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// For users on this node (user in `C10m-User`).
    Node,
    /// Topic from the header, or else the subject tail.
    Topic(&'a str),
    All,
    /// A backend's publish to a user, to be looked up.
    User(&'a str),
    /// A command on a user's connections ([`CMD`]).
    Command,
    Unknown,
}

pub fn route(subject: &str) -> Route<'_> {
    if subject == ALL {
        Route::All
    } else if subject == CMD {
        Route::Command
    } else if let Some(t) = subject.strip_prefix(TOPIC_PREFIX) {
        Route::Topic(t)
    } else if let Some(u) = subject.strip_prefix(USER_PREFIX) {
        Route::User(u)
    } else if subject.starts_with(NODE_PREFIX) {
        Route::Node
    } else {
        Route::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_subject_tails_go_in_headers() {
        assert_eq!(topic_subject("news"), ("c10m.topic.news".into(), false));
        assert_eq!(topic_subject("eu.sports"), ("c10m.topic.eu.sports".into(), false));
        for bad in ["a b", "a..b", ".a", "a.", "x*", "x>", "", "tab\t"] {
            assert_eq!(topic_subject(bad), ("c10m.topic._".into(), true), "{bad:?}");
        }
        assert!(valid_header("a b.c*"));
        assert!(!valid_header("a\r\nb"));
    }

    #[test]
    fn routes_by_subject() {
        assert_eq!(route("c10m.all"), Route::All);
        assert_eq!(route("c10m.topic.eu.sports"), Route::Topic("eu.sports"));
        assert_eq!(route("c10m.user.bob"), Route::User("bob"));
        assert_eq!(route("c10m.node.n1"), Route::Node);
        assert_eq!(route("other"), Route::Unknown);
    }
}
