//! Reading a key's generation counters (and its entry): one multi-get per
//! server involved, the servers in parallel; a counter with copies absent
//! has them added and read again before the read decides, and copies found
//! behind their counter's value are raised to it in the background.

use std::sync::Arc;
use std::time::Duration;

use memcache::exp::{Get, Meta, Op, OpResult, Set};

use super::counters::{current_entry, reading as reading_of, stamp, Layout, Reading, Seen};
use super::servers::{batches, Pool};
use super::{cause, MemcachedBackend, NAME};
use crate::backend::{Lookup, Ticket};
use crate::Error;

/// How long a background repair of counter copies may take.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(1);

fn vanished() -> Error {
    Error::backend(
        NAME,
        "generation counters vanished as they were added (is the server out of memory?)",
    )
}

/// The same failure again, for each key of a batched read that needed the
/// server (errors are not `Clone`).
fn copy(e: &Error) -> Error {
    match e {
        Error::CircuitOpen { backend } => Error::CircuitOpen { backend },
        Error::Timeout { backend, timeout } => Error::Timeout {
            backend,
            timeout: *timeout,
        },
        other => Error::backend(NAME, other.to_string()),
    }
}

/// What one read of a key's counters (and entry) found.
pub(super) struct Read {
    /// The entry, if asked for and there.
    pub(super) stored: Option<Vec<u8>>,
    /// The entry's CAS token, when it was there.
    pub(super) stored_cas: Option<u64>,
    /// Each counter's copies, in the order of their servers.
    pub(super) seen: Vec<Vec<Seen>>,
    /// The CAS token of each copy read with a value.
    pub(super) cas: Vec<Vec<Option<u64>>>,
    /// Why a server holding copies could not be asked, if one could not.
    pub(super) failure: Option<Error>,
}

impl Read {
    /// A read of `layout` that has heard from no server yet.
    pub(super) fn blank(layout: &Layout) -> Read {
        Read {
            stored: None,
            stored_cas: None,
            seen: layout
                .counters
                .iter()
                .map(|c| vec![Seen::Unread; c.servers.len()])
                .collect(),
            cas: layout
                .counters
                .iter()
                .map(|c| vec![None; c.servers.len()])
                .collect(),
            failure: None,
        }
    }

    /// Records that `failure` kept a server holding copies from answering.
    pub(super) fn failed(&mut self, failure: &Error) {
        if self.failure.is_none() {
            self.failure = Some(copy(failure));
        }
    }
}

/// The error of a read that heard from too few copies of a counter: its
/// server's own when that is a circuit open (the cache counts a skip),
/// else one that says what is unknown.
fn unknown(layout: &Layout, counter: usize, answered: usize, failure: Option<Error>) -> Error {
    if let Some(e @ Error::CircuitOpen { .. }) = failure {
        return e;
    }
    let quorum = layout.quorum;
    Error::backend(
        NAME,
        format!(
            "{answered} of the {n} servers holding the generation counter `{name}` answered, \
             {r} needed to know its value: the entry is a miss and nothing computed now is \
             stored{}",
            cause(failure.as_ref()),
            name = layout.counters[counter].key,
            n = quorum.copies,
            r = quorum.read,
        ),
    )
}

impl MemcachedBackend {
    /// Reads every counter copy of `layout`, and its entry when `entry`:
    /// one multi-get per server, the servers in parallel. Fails only if the
    /// entry's server could not be asked; a copy whose server could not be
    /// is [`Seen::Unread`].
    pub(super) async fn read(
        &self,
        pool: &Pool,
        layout: &Layout,
        entry: bool,
    ) -> Result<Read, Error> {
        let mut reads = self
            .read_many(pool, std::slice::from_ref(layout), entry)
            .await?;
        Ok(reads.pop().expect("one read per layout"))
    }

    /// [`read`](Self::read) for several keys at once: still one multi-get
    /// per server involved, the servers in parallel.
    pub(super) async fn read_many(
        &self,
        pool: &Pool,
        layouts: &[Layout],
        entry: bool,
    ) -> Result<Vec<Read>, Error> {
        // Per server: the slots asked there (which layout; `None`: its
        // entry; else a counter and which of its copies).
        type Slot = (usize, Option<(usize, usize)>);
        let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); pool.ring().len()];
        for (l, layout) in layouts.iter().enumerate() {
            if entry {
                slots[layout.home].push((l, None));
            }
            for (c, counter) in layout.counters.iter().enumerate() {
                for (k, &server) in counter.servers.iter().enumerate() {
                    slots[server].push((l, Some((c, k))));
                }
            }
        }
        let (groups, batches) = batches(slots, |(l, slot), ops| {
            let layout = &layouts[*l];
            let name = match slot {
                None => &layout.entry,
                Some((c, _)) => &layout.counters[*c].key,
            };
            ops.push(Op::from(Get::new(name).meta(Meta::NONE.cas())));
        });
        let mut reads: Vec<Read> = layouts.iter().map(Read::blank).collect();
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for ((l, slot), result) in group.into_iter().zip(results) {
                        let (value, cas) = match result {
                            OpResult::Get(got) => (got.value, got.item.cas),
                            _ => (None, None),
                        };
                        let read = &mut reads[l];
                        match slot {
                            None => {
                                read.stored = value;
                                read.stored_cas = cas;
                            }
                            Some((c, k)) => {
                                read.seen[c][k] = Seen::of(value.as_deref());
                                read.cas[c][k] = cas;
                            }
                        }
                    }
                }
                Err(e) if group.iter().any(|(_, slot)| slot.is_none()) => return Err(e),
                Err(e) => {
                    for (l, _) in group {
                        reads[l].failed(&e);
                    }
                }
            }
        }
        Ok(reads)
    }

    /// Every counter's value from a read that found each one at least
    /// `R` answers (see [`Reading`]): adds the copies that answered
    /// without a value (with the counter's greatest value, or a fresh seed
    /// when it has none) and reads them again, in one exchange per server,
    /// then takes the greatest of what the two rounds saw. (`add` leaves a
    /// copy another caller added first: the value read is the copy's
    /// either way, and copies with a value do not change but by a bump.)
    async fn fill(
        &self,
        pool: &Pool,
        layout: &Layout,
        readings: &[Reading],
        seen: &[Vec<Seen>],
    ) -> Result<Vec<u64>, Error> {
        // One value per counter, the same on each of its copies: a counter
        // whose copies differ loses entries when its greatest copy is down.
        let added: Vec<String> = readings
            .iter()
            .enumerate()
            .map(|(c, reading)| match reading {
                Reading::Incomplete(Some(value)) => value.to_string(),
                _ => self.fresh_seed(c).to_string(),
            })
            .collect();
        let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); pool.ring().len()];
        for (c, reading) in readings.iter().enumerate() {
            if let Reading::Incomplete(_) = reading {
                for (k, s) in seen[c].iter().enumerate() {
                    if *s == Seen::Absent {
                        slots[layout.counters[c].servers[k]].push((c, k));
                    }
                }
            }
        }
        let (groups, batches) = batches(slots, |&(c, _), ops| {
            let counter = &layout.counters[c];
            ops.push(Op::from(
                Set::new(&counter.key, &added[c][..])
                    .add()
                    .ttl(self.life(counter.own)),
            ));
            ops.push(Op::from(Get::new(&counter.key)));
        });
        // What the copies hold now: those read with a value, as read (only
        // a bump changes them); the others, as read again.
        let mut now: Vec<Vec<Seen>> = seen
            .iter()
            .map(|copies| {
                copies
                    .iter()
                    .map(|s| match s {
                        Seen::Value(_) => *s,
                        _ => Seen::Unread,
                    })
                    .collect()
            })
            .collect();
        let mut failure = None;
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for ((c, k), pair) in group.into_iter().zip(results.chunks(2)) {
                        now[c][k] = match pair.get(1) {
                            Some(OpResult::Get(got)) => Seen::of(got.value.as_deref()),
                            _ => Seen::Absent,
                        };
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut values = Vec::with_capacity(readings.len());
        for (c, reading) in readings.iter().enumerate() {
            values.push(match *reading {
                Reading::Known(value) => value,
                Reading::Incomplete(_) => match reading_of(&now[c], layout.quorum) {
                    Reading::Unknown { answered } => {
                        return Err(unknown(layout, c, answered, failure))
                    }
                    // A copy absent just after it was added: evicted at
                    // once. The others decide, if any has a value.
                    Reading::Known(value) | Reading::Incomplete(Some(value)) => value,
                    Reading::Incomplete(None) => return Err(vanished()),
                },
                Reading::Unknown { answered } => return Err(unknown(layout, c, answered, failure)),
            });
        }
        Ok(values)
    }

    /// Each counter's value from `read`, filling absent copies; `Err` if
    /// one is unknown (fewer than `R` copies answered). The second item
    /// says whether an entry may be served: not when a counter was missing
    /// (no entry can have recorded its new value).
    pub(super) async fn values(
        &self,
        pool: &Pool,
        layout: &Layout,
        read: &mut Read,
    ) -> Result<(Vec<u64>, bool), Error> {
        let readings: Vec<Reading> = read
            .seen
            .iter()
            .map(|seen| reading_of(seen, layout.quorum))
            .collect();
        let mut complete = Vec::with_capacity(readings.len());
        for (c, reading) in readings.iter().enumerate() {
            match reading {
                Reading::Known(value) => complete.push(*value),
                Reading::Unknown { answered } => {
                    return Err(unknown(layout, c, *answered, read.failure.take()))
                }
                Reading::Incomplete(_) => {}
            }
        }
        if complete.len() == readings.len() {
            return Ok((complete, true));
        }
        let missing = readings.contains(&Reading::Incomplete(None));
        let values = self.fill(pool, layout, &readings, &read.seen).await?;
        Ok((values, !missing))
    }

    /// What a read answers once its counters' `values` are known: the
    /// entry when `servable` and recorded under those values, with the
    /// ticket of those values; copies found behind are repaired first.
    pub(super) fn answer(
        &self,
        pool: &Arc<Pool>,
        layout: &Layout,
        read: &mut Read,
        values: &[u64],
        servable: bool,
    ) -> Lookup {
        self.repair(pool, layout, read, values);
        let value = match read.stored.take() {
            Some(stored) if servable => current_entry(stored, values),
            _ => None,
        };
        Lookup::new(value).with_ticket(Ticket::tag(stamp(values)))
    }

    /// Brings the copies a read found below their counter's value up to
    /// it, in the background (the read stays one round trip), each only if
    /// unchanged since the read (CAS). So a bump that reached a majority
    /// but not every copy, or copies added concurrently with different
    /// seeds, converge: the counter keeps its value when the servers
    /// holding its greatest copies go down, and a later loss of those
    /// copies cannot bring a lower value back. Copies absent are left
    /// alone (adding one could bring back a value lost since the read).
    pub(super) fn repair(&self, pool: &Arc<Pool>, layout: &Layout, read: &Read, values: &[u64]) {
        let mut batches: Vec<(usize, Vec<Op>)> = Vec::new();
        let mut keys = Vec::new();
        for ((counter, value), (seen, cas)) in layout
            .counters
            .iter()
            .zip(values)
            .zip(read.seen.iter().zip(&read.cas))
        {
            let behind: Vec<(usize, u64)> = counter
                .servers
                .iter()
                .zip(seen.iter().zip(cas))
                .filter_map(|(&server, (s, cas))| match (s, cas) {
                    (Seen::Value(v), Some(cas)) if v < value => Some((server, *cas)),
                    _ => None,
                })
                .collect();
            if behind.is_empty() {
                continue;
            }
            let mut repairing = self.repairing.lock().unwrap_or_else(|e| e.into_inner());
            if !repairing.insert(counter.key.clone()) {
                continue;
            }
            drop(repairing);
            keys.push(counter.key.clone());
            let set = Set::new(&counter.key, value.to_string()).ttl(self.life(counter.own));
            for (server, cas) in behind {
                let op = Op::from(set.clone().compare_cas(cas));
                match batches.iter_mut().find(|(s, _)| *s == server) {
                    Some((_, ops)) => ops.push(op),
                    None => batches.push((server, vec![op])),
                }
            }
        }
        if batches.is_empty() {
            return;
        }
        let (pool, repairing) = (pool.clone(), self.repairing.clone());
        tokio::spawn(async move {
            // Bounded like a call: a hung server does not keep it.
            let _ = tokio::time::timeout(REPAIR_TIMEOUT, pool.fan_out(batches)).await;
            let mut repairing = repairing.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                repairing.remove(&key);
            }
        });
    }
}
