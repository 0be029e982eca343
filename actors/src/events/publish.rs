//! Publishing a round of committed events to JetStream: every event with
//! `Nats-Msg-Id = eventId`, sends pipelined (at most `max_pending` awaiting their ack, below
//! the ack subscription's channel capacity: async-nats drops what overflows it), then the
//! acks still missing awaited.
//!
//! Why not `jetstream::Context::send_publish`: per message it starts a timer around the
//! send, draws a fresh inbox, registers a request in the connection's reply table and
//! hands back a oneshot future with a timer of its own; awaiting 5,000 of those through
//! `join_all` took about a quarter of the sidecar's cycles under load (profile in
//! BENCHMARKS.md). A round instead subscribes once to a wildcard inbox of its own
//! (`<inbox>.*`), publishes each event with the reply subject `<inbox>.<index>`, and reads
//! the acks off that one subscription (while sending too) until every index is answered
//! or the deadline passes: the same JetStream publish with the same guarantees (an event counts as
//! published only on its own positive ack), with one timer per round instead of two per
//! event. The subscription is sent on the same connection before the first publish, so the
//! server knows it before any ack is due.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::Deserialize;

use super::store::CommittedBatch;
use super::stream::{message_of, subject, timestamp};

/// The connection the relay publishes on, and JetStream on it (stream management).
#[derive(Clone)]
pub struct JetStreamLink {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// Most publishes of a round awaiting their ack. Must stay below the client's
    /// subscription capacity (65,536 by default): async-nats drops the messages that
    /// overflow a subscription's channel, and a lost ack means a needless republish.
    pub max_pending: usize,
}

/// [`JetStreamLink::max_pending`] by default: deep enough to keep JetStream busy, far
/// below async-nats' default subscription capacity.
pub const MAX_PENDING_ACKS: usize = 4_096;

impl JetStreamLink {
    pub fn new(client: async_nats::Client, jetstream: jetstream::Context) -> Self {
        Self {
            client,
            jetstream,
            max_pending: MAX_PENDING_ACKS,
        }
    }
}

/// What JetStream answers to a publish: `{"stream", "seq", "duplicate"}` or `{"error"}`.
#[derive(Deserialize)]
struct PubAckReply {
    seq: Option<u64>,
    error: Option<PubAckError>,
}

#[derive(Deserialize)]
struct PubAckError {
    #[serde(default)]
    description: String,
}

/// Which event of the round an ack answers: the last token of its subject, if the reply
/// is a positive ack; an error otherwise.
fn judge_ack(message: &async_nats::Message) -> Result<usize, String> {
    let index = message
        .subject
        .as_str()
        .rsplit_once('.')
        .and_then(|(_, i)| i.parse::<usize>().ok())
        .ok_or_else(|| format!("an ack on an unexpected subject: {}", message.subject))?;
    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Err("no stream takes the subject (no responders)".to_owned());
    }
    match serde_json::from_slice::<PubAckReply>(&message.payload) {
        Ok(PubAckReply { error: Some(e), .. }) => Err(format!("JetStream: {}", e.description)),
        Ok(PubAckReply { seq: Some(_), .. }) => Ok(index),
        Ok(_) => Err("an ack without a sequence".to_owned()),
        Err(err) => Err(format!("an ack that is not JSON: {err}")),
    }
}

/// The acks of one round as they come in.
struct Acks {
    subscription: async_nats::Subscriber,
    /// `acked[i]`: the i-th event of the round (batches in order) has its positive ack.
    acked: Vec<bool>,
    /// Publishes answered, positively or not.
    answered: usize,
    error: Option<String>,
}

impl Acks {
    fn take(&mut self, message: &async_nats::Message) {
        match judge_ack(message) {
            Ok(i) if i < self.acked.len() => {
                if !std::mem::replace(&mut self.acked[i], true) {
                    self.answered += 1;
                }
            }
            Ok(_) => {}
            Err(err) => {
                self.error.get_or_insert(err);
                // An error answers its publish too: no need to wait for it.
                self.answered += 1;
            }
        }
    }

    /// Waits for acks until fewer than `limit` of `sent` publishes are unanswered (a
    /// `limit` of 1: all answered).
    async fn wait_below(
        &mut self,
        sent: usize,
        limit: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        while sent - self.answered.min(sent) >= limit.max(1) {
            match tokio::time::timeout_at(deadline, self.subscription.next()).await {
                Ok(Some(message)) => self.take(&message),
                Ok(None) => return Err("the ack subscription ended".to_owned()),
                Err(_) => return Err("timed out waiting for acks".to_owned()),
            }
        }
        Ok(())
    }
}

/// Publishes every event of `round` (sends pipelined, at most `max_pending` awaiting
/// their ack; then the acks still missing; each phase within `timeout`). Returns the
/// batches fully acknowledged, the rest (with only their unacknowledged events), and the
/// first error.
pub async fn publish_round(
    link: &JetStreamLink,
    round: Vec<CommittedBatch>,
    timeout: Duration,
) -> (Vec<CommittedBatch>, Vec<CommittedBatch>, Option<String>) {
    let total: usize = round.iter().map(|b| b.events.len()).sum();
    let inbox = link.client.new_inbox();
    let deadline = tokio::time::Instant::now() + timeout;
    let subscribed =
        tokio::time::timeout_at(deadline, link.client.subscribe(format!("{inbox}.*"))).await;
    let subscription = match subscribed {
        Ok(Ok(subscription)) => subscription,
        Ok(Err(err)) => return (Vec::new(), round, Some(err.to_string())),
        Err(_) => return (Vec::new(), round, Some("timed out subscribing".to_owned())),
    };
    let mut acks = Acks {
        subscription,
        acked: vec![false; total],
        answered: 0,
        error: None,
    };
    let mut sent = 0usize;
    let sends = async {
        for batch in &round {
            let received_at = timestamp(batch.received_at);
            for row in &batch.events {
                acks.wait_below(sent, link.max_pending, deadline).await?;
                if sent % 256 == 255 {
                    // A long round must not hold a runtime worker from other tasks.
                    tokio::task::yield_now().await;
                }
                let (headers, payload) = message_of(row, &received_at);
                link.client
                    .publish_with_reply_and_headers(
                        subject(&row.event_type),
                        format!("{inbox}.{sent}"),
                        headers,
                        payload,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout_at(deadline, sends).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => acks.error = Some(err),
        Err(_) => acks.error = Some("timed out sending publishes".to_owned()),
    }
    // The acks still missing for what was sent, within the same bound again (as each ack
    // of `send_publish` had the context's timeout). After a failed send, what was sent
    // may still be acknowledged: those events need no second publish.
    let deadline = tokio::time::Instant::now() + timeout;
    if let Err(err) = acks.wait_below(sent, 1, deadline).await {
        acks.error.get_or_insert(err);
    }
    let mut done = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    for mut batch in round {
        batch.events.retain(|_| {
            let keep = !acks.acked[i];
            i += 1;
            keep
        });
        if batch.events.is_empty() {
            done.push(batch);
        } else {
            rest.push(batch);
        }
    }
    (done, rest, acks.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(subject: &str, payload: &str) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: payload.to_owned().into(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_positive_ack_names_its_event() {
        let ack = reply(
            "_INBOX.x.17",
            r#"{"stream":"EVENTS","seq":5,"duplicate":true}"#,
        );
        assert_eq!(judge_ack(&ack), Ok(17));
    }

    #[test]
    fn errors_and_odd_answers_are_not_acks() {
        let err = reply(
            "_INBOX.x.3",
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        );
        assert_eq!(
            judge_ack(&err),
            Err("JetStream: maximum messages exceeded".to_owned())
        );
        assert!(judge_ack(&reply("_INBOX.x.3", "{}")).is_err());
        assert!(judge_ack(&reply("_INBOX.x.3", "not json")).is_err());
        assert!(judge_ack(&reply("_INBOX.x.y", r#"{"seq":1}"#)).is_err());
        let mut none = reply("_INBOX.x.3", "");
        none.status = Some(async_nats::StatusCode::NO_RESPONDERS);
        assert!(judge_ack(&none).is_err());
    }
}
