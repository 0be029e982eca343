//! The chaos load: clients that post event batches to random replicas, re-send some ids they
//! sent before (duplicates), and retry a batch whose answer they did not get or that was
//! refused for a reason worth retrying (as a real client would). Every answer is recorded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::cluster::Cluster;

/// What the clients saw.
#[derive(Default)]
pub struct Report {
    /// How many times each id was answered `accepted` (the contract allows exactly one).
    pub accepted: HashMap<String, u32>,
    /// Ids answered `duplicate`.
    pub duplicates: u64,
    /// Every id sent, with the user it was sent as.
    pub sent: HashMap<String, String>,
    pub events_sent: u64,
    pub requests: u64,
    /// Status code (0 = no answer: connection refused or reset) -> count.
    pub statuses: HashMap<u16, u64>,
    /// Answers the contract does not allow on POST /events, with their bodies.
    pub forbidden_answers: Vec<String>,
    /// Accepted events per second of the run (index = second).
    pub accepted_per_second: Vec<u64>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const USERS: [&str; 6] = [
    "alice@example.com",
    "mod@example.com",
    "teen@example.com",
    "kid@example.com",
    "pending@example.com",
    "bob@example.com",
];

impl Load {
    pub async fn start(cluster: &Cluster, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let urls: Vec<String> = cluster.replicas.iter().map(|r| r.base_url()).collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let email = USERS[i % USERS.len()];
            let tokens = cluster
                .emulator
                .issue_tokens(email, &format!("chaos-device-{i}"))
                .expect("tokens");
            let token = tokens["access_token"].as_str().unwrap().to_owned();
            let user = cluster.emulator.user_id(email).unwrap();
            let client = Client {
                token,
                user,
                urls: urls.clone(),
                device: format!("chaos-device-{i}"),
            };
            let (stop, report) = (stop.clone(), report.clone());
            tasks.push(tokio::spawn(async move {
                client.run(stop, report, started).await
            }));
        }
        Load {
            stop,
            report,
            tasks,
        }
    }

    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.report)
            .ok()
            .expect("every client stopped")
            .into_inner()
            .unwrap()
    }
}

struct Client {
    token: String,
    user: String,
    urls: Vec<String>,
    device: String,
}

impl Client {
    async fn run(self, stop: Arc<AtomicBool>, report: Arc<Mutex<Report>>, started: Instant) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut mine: Vec<Value> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let batch = self.batch(&mut mine);
            // A client retries the same batch until it gets an answer it can act on.
            for attempt in 0..20 {
                if stop.load(Ordering::SeqCst) && attempt > 0 {
                    break;
                }
                let url = self.urls[rand::thread_rng().gen_range(0..self.urls.len())].clone();
                let sent = http
                    .post(format!("{url}/events"))
                    .bearer_auth(&self.token)
                    .json(&json!({"events": batch}))
                    .send()
                    .await;
                let (status, body) = match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        (status, resp.text().await.unwrap_or_default())
                    }
                    Err(_) => (0, String::new()),
                };
                let done = record(&report, &batch, &self.user, status, &body, started);
                if done {
                    break;
                }
                let pause = rand::thread_rng().gen_range(100..400);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    /// 20 events: mostly new, some re-sent ids of this client's earlier events.
    fn batch(&self, mine: &mut Vec<Value>) -> Vec<Value> {
        let mut rng = rand::thread_rng();
        let mut batch = Vec::new();
        let mut ids = HashSet::new();
        for _ in 0..20 {
            let event = if !mine.is_empty() && rng.gen_bool(0.2) {
                mine.choose(&mut rng).unwrap().clone()
            } else {
                let event_type = *["app.open", "screen.view", "purchase:completed"]
                    .choose(&mut rng)
                    .unwrap();
                let event = json!({
                    "eventId": uuid::Uuid::new_v4().to_string(),
                    "eventType": event_type,
                    "occurredAt": chrono::Utc::now().to_rfc3339(),
                    "device_id": self.device,
                    "payload": {"n": rng.gen_range(0..1000)},
                });
                mine.push(event.clone());
                event
            };
            if ids.insert(event["eventId"].as_str().unwrap().to_owned()) {
                batch.push(event);
            }
        }
        batch
    }
}

/// Records one answer; `true` when the client is done with this batch.
fn record(
    report: &Mutex<Report>,
    batch: &[Value],
    user: &str,
    status: u16,
    body: &str,
    started: Instant,
) -> bool {
    let mut r = report.lock().unwrap();
    r.requests += 1;
    *r.statuses.entry(status).or_default() += 1;
    match status {
        200 => {
            let Ok(answer) = serde_json::from_str::<Value>(body) else {
                r.forbidden_answers
                    .push(format!("200 with a body that is not JSON: {body}"));
                return true;
            };
            r.events_sent += batch.len() as u64;
            for e in batch {
                r.sent
                    .insert(e["eventId"].as_str().unwrap().to_owned(), user.to_owned());
            }
            let second = started.elapsed().as_secs() as usize;
            for result in answer["results"].as_array().into_iter().flatten() {
                let id = result["eventId"].as_str().unwrap_or_default().to_owned();
                match result["status"].as_str() {
                    Some("accepted") => {
                        *r.accepted.entry(id).or_default() += 1;
                        if r.accepted_per_second.len() <= second {
                            r.accepted_per_second.resize(second + 1, 0);
                        }
                        r.accepted_per_second[second] += 1;
                    }
                    Some("duplicate") => r.duplicates += 1,
                    other => r
                        .forbidden_answers
                        .push(format!("event answered {other:?}: {result}")),
                }
            }
            true
        }
        // No answer (replica killed), shed, or a dependency down: retry the batch.
        0 | 429 => false,
        503 => {
            let code = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            if !matches!(
                code.as_deref(),
                Some("store_unavailable" | "upstream_unavailable")
            ) {
                r.forbidden_answers
                    .push(format!("503 with code {code:?}: {body}"));
            }
            false
        }
        _ => {
            r.forbidden_answers.push(format!("{status}: {body}"));
            true
        }
    }
}
