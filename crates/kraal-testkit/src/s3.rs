//! Test helpers for backups: moto's S3-compatible server on a free loopback port (from
//! the test venv `scripts/setup.sh` installs), and deterministic incompressible bytes.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/setup.sh` (with `KRAAL_SETUP_TEST_DEPS=1`) installs moto.
pub const MOTO: &str = "/opt/kraal-test/venv/bin/moto_server";

/// A running moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto (with `env`, e.g. `INITIAL_NO_AUTH_ACTION_COUNT`) and waits until it
    /// accepts connections.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        assert!(
            std::path::Path::new(MOTO).exists(),
            "{MOTO} is missing: run scripts/setup.sh with KRAAL_SETUP_TEST_DEPS=1"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        #[allow(clippy::disallowed_methods)] // test harness: the S3 server
        let child = Command::new(MOTO)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto { child, port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (an unsigned request, which moto takes).
    pub fn create_bucket(&self, name: &str) {
        let port = self.port;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

/// Deterministic pseudo-random bytes (incompressible, so chunk sizes are realistic).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
