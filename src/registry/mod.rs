//! The shard-local connection registry: a slab of generation-tagged slots.
//!
//! A connection id is (shard, slot, generation). A slot is reused after its connection is
//! freed, with a new generation, so an id held by a timer, a completion or another shard is
//! recognised as stale instead of reaching the wrong connection.
#![forbid(unsafe_code)]

use slab::Slab;

use crate::ring::GENERATION_MASK;

/// Names one connection anywhere in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
}

/// Slots fit in 24 bits of a packed id; rings hold at most 2^20 descriptors.
const _: () = assert!(crate::config::RING_FILES_KERNEL_MAX < 1 << 24);

impl ConnId {
    /// 64 bits: shard (16) | generation (24) | slot (24), for dense indexes.
    pub fn pack(self) -> u64 {
        debug_assert!(self.slot < 1 << 24 && self.generation <= GENERATION_MASK);
        ((self.shard as u64) << 48) | ((self.generation as u64) << 24) | self.slot as u64
    }

    pub fn unpack(v: u64) -> ConnId {
        ConnId {
            shard: (v >> 48) as u16,
            generation: ((v >> 24) as u32) & GENERATION_MASK,
            slot: (v as u32) & ((1 << 24) - 1),
        }
    }

    /// The key a timer-wheel entry carries: slot and generation.
    pub fn timer_key(self) -> u64 {
        ((self.generation as u64) << 32) | self.slot as u64
    }
}

struct Entry<T> {
    generation: u32,
    value: T,
}

/// A slab whose entries carry a generation.
pub struct Registry<T> {
    slab: Slab<Entry<T>>,
    /// Generation given to the next insert; bumped on every insert, so each slot's successive
    /// occupants differ. Kept within 24 bits to fit `user_data`.
    next_generation: u32,
    /// 0 < len <= capacity_max always holds after an insert.
    capacity_max: usize,
    /// One past the highest slot ever used.
    high: u32,
}

impl<T> Registry<T> {
    /// Reserves room for `capacity_max` entries up front: the memory is only touched as slots
    /// fill, so a large reservation costs address space, not resident memory, and the slab
    /// never doubles (and copies) under load.
    pub fn new(capacity_max: usize) -> Registry<T> {
        Registry {
            slab: Slab::with_capacity(capacity_max),
            next_generation: 1,
            capacity_max,
            high: 0,
        }
    }

    /// Inserts a value and returns its (slot, generation), or gives the value back when full.
    pub fn insert(&mut self, value: T) -> Result<(u32, u32), T> {
        if self.slab.len() >= self.capacity_max {
            return Err(value);
        }
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        let slot = self.slab.insert(Entry { generation, value });
        assert!(slot < u32::MAX as usize);
        self.high = self.high.max(slot as u32 + 1);
        Ok((slot as u32, generation))
    }

    pub fn get(&self, slot: u32, generation: u32) -> Option<&T> {
        match self.slab.get(slot as usize) {
            Some(e) if e.generation == generation => Some(&e.value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut T> {
        match self.slab.get_mut(slot as usize) {
            Some(e) if e.generation == generation => Some(&mut e.value),
            _ => None,
        }
    }

    pub fn remove(&mut self, slot: u32, generation: u32) -> Option<T> {
        self.get(slot, generation)?;
        Some(self.slab.remove(slot as usize).value)
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// One past the highest slot ever used: every live slot is below it.
    pub fn slot_bound(&self) -> u32 {
        self.high
    }

    /// The entry in `slot`, if any, with its generation.
    pub fn get_at(&self, slot: u32) -> Option<(u32, &T)> {
        self.slab.get(slot as usize).map(|e| (e.generation, &e.value))
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every live entry as (slot, generation, value).
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, &T)> {
        self.slab.iter().map(|(s, e)| (s as u32, e.generation, &e.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_detected_after_slot_reuse() {
        let mut r = Registry::new(4);
        let (s1, g1) = r.insert("a").unwrap();
        assert_eq!(r.remove(s1, g1), Some("a"));
        let (s2, g2) = r.insert("b").unwrap();
        assert_eq!(s1, s2, "slab reuses the freed slot");
        assert_ne!(g1, g2);
        assert_eq!(r.get(s1, g1), None);
        assert_eq!(r.remove(s1, g1), None);
        assert_eq!(r.get(s2, g2), Some(&"b"));
        assert_eq!(r.slot_bound(), 1, "one slot ever used");
    }

    #[test]
    fn conn_ids_pack_and_unpack() {
        let id = ConnId { shard: 1023, slot: (1 << 20) + 5, generation: GENERATION_MASK };
        assert_eq!(ConnId::unpack(id.pack()), id);
    }

    #[test]
    fn insert_beyond_capacity_is_refused() {
        let mut r = Registry::new(2);
        r.insert(1).unwrap();
        r.insert(2).unwrap();
        assert_eq!(r.insert(3), Err(3));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn generations_stay_within_user_data_bits() {
        let mut r = Registry::new(1);
        r.next_generation = GENERATION_MASK;
        let (s, g) = r.insert(()).unwrap();
        assert_eq!(g, GENERATION_MASK);
        r.remove(s, g);
        let (_, g2) = r.insert(()).unwrap();
        assert_eq!(g2, 0);
    }
}
