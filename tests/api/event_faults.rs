//! Faults during a steady load (issue 4, "Prove it"): the test's own nats-server killed and
//! restarted, its redis-server killed, and the service killed between commit and publish.
//! After each: every `accepted` id is in the stream exactly once, none is missing, and the
//! aggregates count each event once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::event_support::*;
use crate::helpers::{
    create_postgres_database, free_port, postgres_url, require, PrivateServer, Service, Store,
    TestApp,
};

/// What a steady load saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<String>,
    /// Batches that got no 200 answer (their fate is unknown to the client).
    unanswered: Vec<Vec<String>>,
    answered: usize,
}

/// `workers` clients posting fresh batches of `size` ids to `base` until `stop`.
fn start_load(
    base: String,
    workers: usize,
    size: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let tasks = (0..workers).map(|w| {
            let (seen, client, stop, base) =
                (seen.clone(), client.clone(), stop.clone(), base.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..size).map(|_| new_id()).collect();
                    let resp = client
                        .post(format!("{base}/events"))
                        .bearer_auth(token(&format!("load{w}")))
                        .json(&batch(&ids))
                        .send()
                        .await;
                    let body = match resp {
                        Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                        _ => None,
                    };
                    {
                        let mut seen = seen.lock().unwrap();
                        match body {
                            Some(body) => {
                                let accepted = accepted_ids(&body);
                                assert_eq!(accepted.len(), size, "fresh ids are accepted: {body}");
                                seen.accepted.extend(accepted);
                                seen.answered += 1;
                            }
                            None => seen.unanswered.push(ids),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        futures::future::join_all(tasks).await;
        Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
    })
}

#[tokio::test]
async fn nats_killed_and_restarted_mid_load() {
    if !require(Service::Postgres) {
        return;
    }
    let mut nats = PrivateServer::nats().await;
    let (stream, _) = unique_names();
    let Some(app) = TestApp::builder()
        .store(Store::Postgres)
        .test_auth()
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", &stream)
        .spawn()
        .await
    else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(app.address.clone(), 4, 20, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(
        seen.unanswered.is_empty(),
        "NATS down never fails a request"
    );
    assert!(seen.answered > 10, "the load ran: {}", seen.answered);
    let n = seen.accepted.len();
    assert!(
        wait_stream_len(&nats.url(), &stream, n, Duration::from_secs(30)).await,
        "publishing resumed by itself"
    );
    assert_stream_is(&nats.url(), &stream, &seen.accepted).await;
    let (sum, counted) =
        wait_aggregates(&app.database_url, n as i64, Duration::from_secs(20)).await;
    assert_eq!(
        (sum, counted),
        (n as i64, n as i64),
        "aggregates count each event once"
    );
}

#[tokio::test]
async fn redis_killed_mid_load() {
    if !require(Service::Postgres) {
        return;
    }
    let nats = PrivateServer::nats().await;
    let mut redis = PrivateServer::redis().await;
    let (stream, prefix) = unique_names();
    let Some(app) = TestApp::builder()
        .store(Store::Postgres)
        .test_auth()
        .env("NATS_URL", nats.url())
        .env("REDIS_URL", redis.url())
        .env("REDIS_KEY_PREFIX", prefix)
        .env("EVENT_STREAM", &stream)
        .spawn()
        .await
    else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(app.address.clone(), 4, 20, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Retries of accepted batches are still duplicates without Redis (the table decides).
    let (_, retry) = post_events(&app, "load0", &batch(&[new_id()])).await;
    assert_eq!(retry["accepted"], 1);
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = load.await.unwrap();
    assert!(
        seen.unanswered.is_empty(),
        "Redis down never fails a request"
    );
    seen.accepted.extend(accepted_ids(&retry));
    let n = seen.accepted.len();
    assert!(wait_stream_len(&nats.url(), &stream, n, Duration::from_secs(20)).await);
    assert_stream_is(&nats.url(), &stream, &seen.accepted).await;
    let (sum, counted) =
        wait_aggregates(&app.database_url, n as i64, Duration::from_secs(20)).await;
    assert_eq!(
        (sum, counted),
        (n as i64, n as i64),
        "aggregates count each event once"
    );
}

/// The service as a separate process with `SIDECAR_FAILPOINT=crash_after_commit`: run by
/// [`killed_between_commit_and_publish`], never on its own.
#[tokio::test]
#[ignore = "the child process of killed_between_commit_and_publish"]
async fn crash_child() {
    let var = |k: &str| std::env::var(k).expect(k);
    let Some(_app) = TestApp::builder()
        .test_auth()
        .database_url(var("CRASH_CHILD_DATABASE_URL"))
        .env("SIDECAR_BIND", var("CRASH_CHILD_BIND"))
        .env("NATS_URL", var("CRASH_CHILD_NATS_URL"))
        .env("EVENT_STREAM", var("CRASH_CHILD_STREAM"))
        .env("SIDECAR_FAILPOINT", "crash_after_commit")
        .spawn()
        .await
    else {
        return;
    };
    // The first commit aborts the process long before this ends.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn killed_between_commit_and_publish() {
    if !require(Service::Postgres) {
        return;
    }
    let nats = PrivateServer::nats().await;
    let (stream, _) = unique_names();
    let db_name = create_postgres_database().await;
    let database_url = postgres_url(&db_name);
    let port = free_port();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "event_faults::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env("CRASH_CHILD_DATABASE_URL", &database_url)
        .env("CRASH_CHILD_BIND", format!("127.0.0.1:{port}"))
        .env("CRASH_CHILD_NATS_URL", nats.url())
        .env("CRASH_CHILD_STREAM", &stream)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let up = crate::helpers::eventually(Duration::from_secs(30), || async {
        client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the child service started");

    // Three batches at once: the first commit kills the process.
    let batches: Vec<Vec<String>> = (0..3)
        .map(|_| (0..20).map(|_| new_id()).collect())
        .collect();
    let answers = futures::future::join_all(batches.iter().map(|ids| {
        client
            .post(format!("{base}/events"))
            .bearer_auth(token("crash"))
            .json(&batch(ids))
            .timeout(Duration::from_secs(10))
            .send()
    }))
    .await;
    let status = crate::process::wait_with_timeout(&mut child, Duration::from_secs(10));
    assert!(!status.success(), "the failpoint aborted the service");
    let mut accepted: Vec<String> = Vec::new();
    let mut unanswered: Vec<&Vec<String>> = Vec::new();
    for (ids, answer) in batches.iter().zip(answers) {
        match answer {
            Ok(r) if r.status() == 200 => {
                accepted.extend(accepted_ids(&r.json::<Value>().await.unwrap()))
            }
            _ => unanswered.push(ids),
        }
    }
    assert!(!unanswered.is_empty(), "the crash cut some request short");

    // Restarted without the failpoint: the sweeper publishes the committed batch, and the
    // clients' retries are answered (accepted if not committed, else duplicate).
    let app = TestApp::builder()
        .test_auth()
        .database_url(database_url.clone())
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", &stream)
        .spawn()
        .await
        .unwrap();
    let mut committed_before_crash = 0;
    for ids in &unanswered {
        let (status, answer) = post_events(&app, "crash", &batch(ids)).await;
        assert_eq!(status, 200, "{answer}");
        committed_before_crash += ids_with_status(&answer, "duplicate").len();
        accepted.extend(accepted_ids(&answer));
    }
    assert!(
        committed_before_crash > 0,
        "a commit happened before the crash"
    );
    // Every submitted id is now either accepted once or committed by the crashed process;
    // the stream must hold each submitted id exactly once, nothing else.
    let all: Vec<String> = batches.concat();
    assert_eq!(accepted.len() + committed_before_crash, all.len());
    assert!(
        wait_stream_len(&nats.url(), &stream, all.len(), Duration::from_secs(30)).await,
        "the sweeper published the batch the crash left behind"
    );
    assert_stream_is(&nats.url(), &stream, &all).await;
    let (sum, counted) =
        wait_aggregates(&app.database_url, all.len() as i64, Duration::from_secs(20)).await;
    assert_eq!((sum, counted), (all.len() as i64, all.len() as i64));
    drop(app);
    drop_database(db_name);
}

fn drop_database(name: String) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(db) = sea_orm::Database::connect(crate::helpers::POSTGRES_ADMIN_URL).await {
                use sea_orm::ConnectionTrait;
                let _ = db
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        });
    });
}
