//! The session ledger: which numbered batches of which client session the state holds, so
//! that a batch sent again after a lost acknowledgement is never applied twice.
//!
//! A client session is a random, non-zero `u64` id; its batches are numbered 1, 2, 3, … in
//! the order it sends them. The ledger maps each session to the number of its last applied
//! batch. The reducer consults it in the same step that applies a batch
//! ([`pipeline`](crate::pipeline)), so a batch is either applied and recorded, or skipped as
//! already applied: never both, never twice. The ledger is written into the state file with
//! the statistics ([`snapshot`](crate::snapshot), format version 4), so it survives a
//! restart exactly as far as the statistics do.
//!
//! # Expiry
//! The ledger holds at most [`MAX_SESSIONS`] sessions. Opening or using a session marks it
//! used; when a new session would exceed the bound, the least recently used one is dropped
//! and [`Ledger::evicted`] grows by one. A client that finds its session unknown after a
//! reconnect compares that count with the one it saw when it first opened the session: if
//! it has not grown, its session was never dropped and none of its batches is in the state.
//!
//! # Examples
//! ```
//! use headstart::ledger::Ledger;
//! let mut ledger = Ledger::new();
//! assert!(!ledger.open(7).known);
//! assert!(ledger.admit(7, 1)); // batch 1: apply it
//! assert!(ledger.admit(7, 2));
//! assert!(!ledger.admit(7, 2)); // sent again: already applied
//! assert_eq!(ledger.open(7).last, 2);
//! ```

use std::collections::HashMap;

/// Sessions a ledger remembers; the least recently used one beyond this is dropped.
pub const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The last applied batch's number (0: none yet).
    last: u64,
    /// When the session was last used, on the ledger's own clock.
    used: u64,
}

/// Per-session last applied batch numbers, bounded by [`MAX_SESSIONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    entries: HashMap<u64, Entry>,
    clock: u64,
    evicted: u64,
}

/// What [`Ledger::open`] found for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Whether the ledger knew the session before this call.
    pub known: bool,
    /// The session's last applied batch number (0 if unknown).
    pub last: u64,
    /// Sessions dropped from the ledger so far, ever ([`Ledger::evicted`]).
    pub evicted: u64,
}

/// The ledger as written in a state file: `(session, last, used)` by session id, the clock
/// and the eviction count.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerParts {
    /// `(session id, last applied batch, last used)`, sorted by session id.
    pub sessions: Vec<(u64, u64, u64)>,
    /// The ledger's clock.
    pub clock: u64,
    /// Sessions dropped so far.
    pub evicted: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sessions dropped so far to keep within [`MAX_SESSIONS`].
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Grows with every change ([`open`](Ledger::open), [`admit`](Ledger::admit)): a checkpoint
    /// compares it to know whether the ledger changed since the last one.
    pub fn changes(&self) -> u64 {
        self.clock
    }

    /// The last applied batch number of `session`, if the ledger holds it.
    pub fn last(&self, session: u64) -> Option<u64> {
        self.entries.get(&session).map(|e| e.last)
    }

    /// Registers `session` (with no batch applied) if it is new, marks it used, and reports
    /// what the ledger held for it.
    pub fn open(&mut self, session: u64) -> Opened {
        let known = self.entries.contains_key(&session);
        let entry = self.touch(session);
        Opened {
            known,
            last: entry.last,
            evicted: self.evicted,
        }
    }

    /// Whether batch `seq` of `session` is new: true records it as applied (the caller then
    /// applies it); false means the ledger already holds it or a later one.
    pub fn admit(&mut self, session: u64, seq: u64) -> bool {
        let entry = self.touch(session);
        if seq <= entry.last {
            return false;
        }
        entry.last = seq;
        true
    }

    fn touch(&mut self, session: u64) -> &mut Entry {
        self.clock += 1;
        // Only a new session can overflow the bound (the scan runs once per new session).
        if self.entries.len() >= MAX_SESSIONS && !self.entries.contains_key(&session) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(&id, _)| id)
                .expect("a full ledger has entries");
            self.entries.remove(&oldest);
            self.evicted += 1;
        }
        let clock = self.clock;
        let entry = self.entries.entry(session).or_insert(Entry { last: 0, used: 0 });
        entry.used = clock;
        entry
    }

    /// The ledger's serialisable form.
    pub fn to_parts(&self) -> LedgerParts {
        let mut sessions: Vec<_> = self.entries.iter().map(|(&id, e)| (id, e.last, e.used)).collect();
        sessions.sort_unstable();
        LedgerParts {
            sessions,
            clock: self.clock,
            evicted: self.evicted,
        }
    }

    /// Rebuilds a ledger, checking it.
    ///
    /// # Errors
    /// A message naming what is wrong: more than [`MAX_SESSIONS`] sessions, a session id
    /// of 0 or given twice, or a use stamp after the clock.
    pub fn from_parts(parts: LedgerParts) -> Result<Ledger, String> {
        if parts.sessions.len() > MAX_SESSIONS {
            return Err(format!(
                "the session ledger holds {} sessions, more than {MAX_SESSIONS}",
                parts.sessions.len()
            ));
        }
        let mut entries = HashMap::with_capacity(parts.sessions.len());
        for (id, last, used) in parts.sessions {
            if id == 0 {
                return Err("the session ledger holds session id 0".into());
            }
            if used > parts.clock {
                return Err(format!(
                    "session {id:016x} was used at {used}, after the ledger's clock {}",
                    parts.clock
                ));
            }
            if entries.insert(id, Entry { last, used }).is_some() {
                return Err(format!("the session ledger holds session {id:016x} twice"));
            }
        }
        Ok(Ledger {
            entries,
            clock: parts.clock,
            evicted: parts.evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_admitted_once_and_later_numbers_only() {
        let mut ledger = Ledger::new();
        assert!(ledger.admit(1, 1));
        assert!(ledger.admit(1, 2));
        assert!(!ledger.admit(1, 1));
        assert!(!ledger.admit(1, 2));
        assert!(ledger.admit(1, 3));
        assert!(ledger.admit(2, 1), "sessions are independent");
        assert_eq!(ledger.last(1), Some(3));
        assert_eq!(ledger.last(3), None);
    }

    #[test]
    fn the_least_recently_used_session_is_dropped_and_counted() {
        let mut ledger = Ledger::new();
        for id in 1..=MAX_SESSIONS as u64 {
            ledger.open(id);
        }
        ledger.admit(1, 5); // session 1 is now the most recently used
        assert_eq!(ledger.evicted(), 0);
        let opened = ledger.open(u64::MAX);
        assert_eq!((opened.known, opened.evicted), (false, 1));
        assert_eq!(ledger.len(), MAX_SESSIONS);
        assert_eq!(ledger.last(2), None, "session 2 was the least recently used");
        assert_eq!(ledger.last(1), Some(5));
    }

    #[test]
    fn parts_round_trip_and_bad_parts_are_refused() {
        let mut ledger = Ledger::new();
        ledger.admit(9, 4);
        ledger.open(3);
        let back = Ledger::from_parts(ledger.to_parts()).unwrap();
        assert_eq!(back, ledger);
        let dup = LedgerParts {
            sessions: vec![(5, 1, 1), (5, 2, 2)],
            clock: 2,
            evicted: 0,
        };
        assert!(Ledger::from_parts(dup).unwrap_err().contains("twice"));
        let zero = LedgerParts {
            sessions: vec![(0, 1, 1)],
            clock: 1,
            evicted: 0,
        };
        assert!(Ledger::from_parts(zero).unwrap_err().contains("id 0"));
        let future = LedgerParts {
            sessions: vec![(5, 1, 9)],
            clock: 2,
            evicted: 0,
        };
        assert!(
            Ledger::from_parts(future)
                .unwrap_err()
                .contains("after the ledger's clock")
        );
    }
}
