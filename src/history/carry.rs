//! A live upgrade carries a partition's log to the new process, so a client that resumes
//! after the deploy from a position before it gets its messages, not a gap.
//!
//! The stream keys are hashes with this process's own keys, so they do not travel: each
//! stream goes by its tag and name, each entry by the index of its stream. Times travel as
//! ages. Little-endian, length-prefixed; a decoder never trusts a count it has not checked.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::{Index, Log, ENTRY_BYTES, STREAM_BYTES};
use crate::wire::{put_bytes, put_u64, Reader};

const VERSION: u8 = 1;
const NO_STREAM: u32 = u32::MAX;

impl Log {
    /// The whole log as of `now_us` (the shard clock the log's times are on).
    pub fn export(&self, now_us: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes / 2 + 64);
        out.push(VERSION);
        for v in [self.first_seq, self.top, self.expired_upto, self.collided_upto, self.last_all] {
            put_u64(&mut out, v);
        }
        out.extend_from_slice(&(self.off_last.len() as u32).to_le_bytes());
        for &v in &self.off_last {
            put_u64(&mut out, v);
        }
        // Streams in a fixed order; entries name theirs by position in it.
        let streams: Vec<(&u64, &Index)> = self.streams.iter().collect();
        let position: std::collections::HashMap<u64, u32> =
            streams.iter().enumerate().map(|(i, (k, _))| (**k, i as u32)).collect();
        out.extend_from_slice(&(streams.len() as u32).to_le_bytes());
        for (_, s) in &streams {
            out.push(s.tag);
            put_bytes(&mut out, s.name.as_bytes());
            put_u64(&mut out, s.evicted_upto);
            put_u64(&mut out, s.aged_upto);
            out.extend_from_slice(&(s.seqs.len() as u32).to_le_bytes());
            for &seq in &s.seqs {
                put_u64(&mut out, seq);
            }
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (n, e) in self.entries.iter().enumerate() {
            put_u64(&mut out, now_us.saturating_sub(e.at_us));
            match position.get(&e.key).filter(|_| e.live()) {
                Some(&i) => {
                    let seq = self.first_seq + n as u64;
                    out.extend_from_slice(&i.to_le_bytes());
                    put_u64(&mut out, seq); // the message id: not kept, the number stands in
                    put_u64(&mut out, seq);
                    out.extend_from_slice(&self.part.to_le_bytes());
                    out.push((e.len & super::TEXT != 0) as u8);
                    put_bytes(&mut out, &self.payload(e));
                }
                None => out.extend_from_slice(&NO_STREAM.to_le_bytes()),
            }
        }
        out
    }

    /// Takes over an exported log as of `now_us`, then trims it to this log's own limits.
    /// False (and the log unchanged) if this log already holds messages or `bytes` is not
    /// an export this version reads; the caller then continues the numbering only.
    pub fn import(&mut self, bytes: &[u8], now_us: u64) -> bool {
        if !self.entries.is_empty() {
            return false;
        }
        match self.decode(bytes, now_us) {
            Some(log) => {
                *self = log;
                self.trim(now_us);
                true
            }
            None => false,
        }
    }

    fn decode(&self, bytes: &[u8], now_us: u64) -> Option<Log> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let mut log = Log::with_topics(self.limits, self.topic_limits.clone()).in_part(self.part);
        log.keys = self.keys.clone();
        log.first_seq = r.u64()?;
        log.top = r.u64()?;
        log.expired_upto = r.u64()?;
        log.collided_upto = r.u64()?;
        log.last_all = r.u64()?;
        let off = r.count(8)?;
        let off_last: Vec<u64> = (0..off).map(|_| r.u64()).collect::<Option<_>>()?;
        // A prefix list that changed with the deploy: its silent topics' marks do not apply.
        if off_last.len() == log.off_last.len() {
            log.off_last = off_last;
        }
        let n = r.count(1 + 4 + 8 + 8 + 4)?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.u8()?;
            let name: Box<str> = std::str::from_utf8(r.bytes()?).ok()?.into();
            let evicted_upto = r.u64()?;
            let aged_upto = r.u64()?;
            let count = r.count(8)?;
            let seqs: VecDeque<u64> = (0..count).map(|_| r.u64()).collect::<Option<_>>()?;
            let key = log.keys.hash_one((tag, &*name)) | 1; // as Log::key

            if tag > 2 || log.streams.contains_key(&key) {
                return None; // A tag this version does not know, or a collision of keys.
            }
            log.streams.insert(key, Index { tag, name, seqs, evicted_upto, aged_upto });
            log.bytes += STREAM_BYTES;
            keys.push(key);
        }
        let n = r.count(8 + 4)?;
        for i in 0..n {
            let at_us = now_us.saturating_sub(r.u64()?);
            let stream = r.u32()?;
            if stream == NO_STREAM {
                log.push_entry(0, at_us, &[], false);
                continue;
            }
            let key = *keys.get(stream as usize)?;
            let (_id, seq, _part, text) = (r.u64()?, r.u64()?, r.u16()?, r.u8()? == 1);
            let payload = r.bytes()?;
            if seq != log.first_seq + i as u64 || payload.len() >= super::TEXT as usize {
                return None;
            }
            log.bytes += payload.len() + ENTRY_BYTES;
            log.retained += 1;
            log.push_entry(key, at_us, payload, text);
        }
        // Every stream's positions are entries of that stream.
        let consistent = log.streams.iter().all(|(key, s)| {
            s.seqs.iter().all(|&seq| {
                let i = seq.checked_sub(log.first_seq).map(|i| i as usize);
                i.and_then(|i| log.entries.get(i)).is_some_and(|e| e.key == *key && e.live())
            })
        });
        let within = log.first_seq + log.entries.len() as u64 <= log.top + 1;
        (consistent && within && r.0.is_empty()).then_some(log)
    }
}
