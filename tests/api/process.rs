//! The binary as Kubernetes runs it: signals and exit codes.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{free_port, tempdir};

fn wait_ready(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/health/ready");
    for _ in 0..200 {
        if let Ok(resp) = reqwest::blocking_get(&url) {
            if resp == 200 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

mod reqwest {
    /// A tiny blocking GET (status only) so this test needs no extra client feature.
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = std::net::TcpStream::connect(host)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        stream.read_to_string(&mut buf)?;
        Ok(buf
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }
}

#[test]
fn sigterm_exits_zero_after_serving() {
    let dir = tempdir();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar"))
        .env_clear()
        .env("SIDECAR_BIND", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/s.db?mode=rwc", dir.path.display()),
        )
        .env("APP_ENV", "prod")
        .current_dir(&dir.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_ready(port), "the binary became ready");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
}

#[test]
fn malformed_setting_stops_start_up_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_sidecar"))
        .env_clear()
        .env("EVENT_MAX_BATCH", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EVENT_MAX_BATCH"), "{stderr}");
}

pub fn wait_with_timeout(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
