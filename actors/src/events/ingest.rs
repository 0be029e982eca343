//! [`EventIngest`]: the handle the HTTP layer (and tests, and the benchmark) calls with a
//! user id and a request body. It judges the batch (pure, [`super::validate`]), splits the
//! valid events by shard, asks every shard concurrently, and assembles one result per
//! event in request order (contract 5.1).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::shard::{Decision, ShardMsg};
use super::store::EventRow;
use super::validate::{judge_batch, Judged, RejectReason, RequestError, Rules, ValidEvent};
use crate::metric_names::{EVENTS_TOTAL, HASH_MISMATCH_TOTAL};
use crate::supervisor::Slot;

/// What became of one submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Duplicate { hash_mismatch: bool },
    Rejected(RejectReason),
}

/// One result of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// The normalized (lowercase, hyphenated) id of a valid event; a rejected event's
    /// `eventId` as sent when it was a string; else `None`.
    pub event_id: Option<String>,
    /// For `accepted` and `duplicate`: the hash of the event as submitted now.
    pub event_hash: Option<String>,
    pub status: Status,
}

/// The whole answer of a judged batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub results: Vec<EventOutcome>,
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The durable store (or a shard) could not decide: nothing is claimed accepted.
    #[error("the durable store is unavailable")]
    StoreUnavailable,
}

/// A body judged for one user, not yet stored (see [`EventIngest::judge`]).
#[derive(Debug, Clone)]
pub struct JudgedBatch {
    user: Arc<str>,
    judged: Vec<Judged>,
}

impl JudgedBatch {
    /// The valid events, in-batch repeats included: what the user's and the IP's rate-limit
    /// buckets are charged (malformed events cost nothing, contract section 12).
    pub fn valid_events(&self) -> u32 {
        let valid = self
            .judged
            .iter()
            .filter(|j| !matches!(j, Judged::Rejected { .. }))
            .count();
        u32::try_from(valid).unwrap_or(u32::MAX)
    }

    /// The valid events per `device_id` (events without one are not counted): what each
    /// device's bucket is charged. Unordered.
    pub fn device_counts(&self) -> Vec<(&str, u32)> {
        let mut counts: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for j in &self.judged {
            let device = match j {
                Judged::Valid(e) | Judged::InBatchRepeat { event: e, .. } => e.device_id.as_deref(),
                Judged::Rejected { .. } => None,
            };
            if let Some(device) = device {
                *counts.entry(device).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

#[derive(Clone)]
pub struct EventIngest {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<Slot<ShardMsg>>,
    rules: Rules,
    /// `eventIdAndHash`: shards are chosen by hash, so that claims on one hash meet.
    shard_by_hash: bool,
    /// How long a request waits for its shards.
    timeout: Duration,
}

impl EventIngest {
    pub fn new(
        shards: Vec<Slot<ShardMsg>>,
        rules: Rules,
        shard_by_hash: bool,
        timeout: Duration,
    ) -> Self {
        assert!(!shards.is_empty(), "at least one dedupe shard");
        Self {
            inner: Arc::new(Inner {
                shards,
                rules,
                shard_by_hash,
                timeout,
            }),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.inner.rules
    }

    fn shard_of(&self, event: &ValidEvent) -> usize {
        let n = self.inner.shards.len() as u64;
        let key = if self.inner.shard_by_hash {
            u64::from_str_radix(&event.event_hash[..16], 16).unwrap_or(0)
        } else {
            let (hi, lo) = event.event_id.as_u64_pair();
            (hi ^ lo).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        ((key >> 32) % n) as usize
    }

    /// Judges and stores one `POST /events` body on behalf of `user_id`.
    pub async fn submit(&self, user_id: &str, body: &[u8]) -> Result<BatchOutcome, IngestError> {
        let batch = self.judge(user_id, body)?;
        self.store(batch).await
    }

    /// The first half of [`Self::submit`]: judges the body (pure; nothing stored), so the
    /// caller can charge the rate limits with [`JudgedBatch::valid_events`] and
    /// [`JudgedBatch::device_counts`] before anything is stored.
    pub fn judge(&self, user_id: &str, body: &[u8]) -> Result<JudgedBatch, IngestError> {
        let judged = judge_batch(body, user_id, &self.inner.rules, Utc::now())?;
        Ok(JudgedBatch {
            user: user_id.into(),
            judged,
        })
    }

    /// The second half of [`Self::submit`]: stores the valid events of a judged batch and
    /// assembles the answer.
    pub async fn store(&self, batch: JudgedBatch) -> Result<BatchOutcome, IngestError> {
        let JudgedBatch { user, mut judged } = batch;
        let n = self.inner.shards.len();
        let mut per_shard: Vec<(Vec<EventRow>, Vec<usize>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (index, j) in judged.iter_mut().enumerate() {
            if let Judged::Valid(e) = j {
                let shard = self.shard_of(e);
                let slot = &mut per_shard[shard];
                // The row takes the event's text; the judgement keeps id and hash, which
                // is all the answer needs.
                slot.0.push(EventRow {
                    event_id: e.event_id,
                    user_id: user.clone(),
                    device_id: e.device_id.take(),
                    event_type: std::mem::take(&mut e.event_type),
                    occurred_at: e.occurred_at,
                    event_hash: e.event_hash.clone(),
                    payload: std::mem::take(&mut e.payload),
                });
                slot.1.push(index);
            }
        }
        let calls = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (rows, _))| !rows.is_empty())
            .map(|(s, (rows, indexes))| {
                let slot = self.inner.shards[s].clone();
                let timeout = self.inner.timeout;
                async move {
                    let answer = slot
                        .call(|reply| ShardMsg::Submit(rows, reply), timeout)
                        .await;
                    (indexes, answer)
                }
            });
        let mut decided: Vec<Option<Decision>> = vec![None; judged.len()];
        for (indexes, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(Ok(decisions)) => {
                    for (index, d) in indexes.into_iter().zip(decisions) {
                        decided[index] = Some(d);
                    }
                }
                Ok(Err(_)) | Err(_) => return Err(IngestError::StoreUnavailable),
            }
        }
        Ok(assemble(judged, decided))
    }
}

fn assemble(judged: Vec<Judged>, decided: Vec<Option<Decision>>) -> BatchOutcome {
    let mut out = BatchOutcome {
        results: Vec::with_capacity(judged.len()),
        ..Default::default()
    };
    // The hash a later in-batch copy is compared with: the stored one when the first copy
    // was a duplicate, else the first copy's own.
    let reference_hash = |first: usize, judged: &[Judged], decided: &[Option<Decision>]| match (
        &decided[first],
        &judged[first],
    ) {
        (Some(Decision::Duplicate { stored_hash }), Judged::Valid(e)) => {
            stored_hash.clone().or_else(|| Some(e.event_hash.clone()))
        }
        (_, Judged::Valid(e)) => Some(e.event_hash.clone()),
        _ => None,
    };
    let mut mismatches = 0u64;
    for (index, j) in judged.iter().enumerate() {
        let outcome = match j {
            Judged::Rejected { event_id, reason } => EventOutcome {
                event_id: event_id.clone(),
                event_hash: None,
                status: Status::Rejected(*reason),
            },
            Judged::Valid(e) => {
                let status = match &decided[index] {
                    Some(Decision::Accepted) => Status::Accepted,
                    Some(Decision::Duplicate { stored_hash }) => Status::Duplicate {
                        hash_mismatch: stored_hash.as_ref().is_some_and(|h| *h != e.event_hash),
                    },
                    Some(Decision::HashDuplicate) | None => Status::Duplicate {
                        hash_mismatch: false,
                    },
                };
                outcome_of(e, status)
            }
            Judged::InBatchRepeat { first, event } => {
                let reference = reference_hash(*first, &judged, &decided);
                let hash_mismatch = reference.is_some_and(|h| h != event.event_hash);
                outcome_of(event, Status::Duplicate { hash_mismatch })
            }
        };
        match &outcome.status {
            Status::Accepted => out.accepted += 1,
            Status::Duplicate { hash_mismatch } => {
                out.duplicates += 1;
                mismatches += u64::from(*hash_mismatch);
            }
            Status::Rejected(_) => out.rejected += 1,
        }
        out.results.push(outcome);
    }
    metrics::counter!(EVENTS_TOTAL, "outcome" => "accepted").increment(out.accepted as u64);
    metrics::counter!(EVENTS_TOTAL, "outcome" => "duplicate").increment(out.duplicates as u64);
    metrics::counter!(EVENTS_TOTAL, "outcome" => "rejected").increment(out.rejected as u64);
    if mismatches > 0 {
        metrics::counter!(HASH_MISMATCH_TOTAL).increment(mismatches);
    }
    out
}

fn outcome_of(e: &ValidEvent, status: Status) -> EventOutcome {
    EventOutcome {
        event_id: Some(e.event_id.hyphenated().to_string()),
        event_hash: Some(e.event_hash.clone()),
        status,
    }
}

/// The normalized id of `text`, if it is a valid event id (for tests and tools).
pub fn normalize_event_id(text: &str) -> Option<Uuid> {
    super::validate::parse_event_id(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest() -> EventIngest {
        EventIngest::new(
            vec![Slot::new()],
            Rules {
                max_batch: 500,
                max_payload_bytes: 32_768,
                max_age_days: 30,
                hash_bucket_seconds: 60,
            },
            false,
            Duration::from_secs(1),
        )
    }

    fn event(id: &str, device: Option<&str>) -> serde_json::Value {
        let mut e = serde_json::json!({
            "eventId": id,
            "eventType": "app.open",
            "occurredAt": Utc::now().to_rfc3339(),
            "payload": {}
        });
        if let Some(device) = device {
            e["device_id"] = device.into();
        }
        e
    }

    #[test]
    fn the_rate_limit_cost_counts_valid_events_only() {
        let a = "6f1d2a8e-3b4c-4d5e-8f90-a1b2c3d4e5f6";
        let b = "7f1d2a8e-3b4c-4d5e-8f90-a1b2c3d4e5f6";
        let body = serde_json::json!({"events": [
            event(a, Some("phone")),
            event(a, Some("phone")),                        // in-batch repeat: still sent
            event(b, Some("watch")),
            event("not-a-uuid", Some("phone")),             // malformed: free
            {"eventId": b, "eventType": "BAD", "occurredAt": "x", "payload": {}},
            event("8f1d2a8e-3b4c-4d5e-8f90-a1b2c3d4e5f6", None), // no device
        ]});
        let batch = ingest()
            .judge("u", &serde_json::to_vec(&body).unwrap())
            .unwrap();
        assert_eq!(batch.valid_events(), 4);
        let mut devices = batch.device_counts();
        devices.sort_unstable();
        assert_eq!(devices, vec![("phone", 2), ("watch", 1)]);
    }
}
