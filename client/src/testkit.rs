//! Starts and stops real `riffle` broker processes for integration tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Connection;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

/// A broker process with its own data dir and ports.
pub struct TestBroker {
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// Kafka listener `127.0.0.1:port`.
    pub kafka: String,
    /// HTTP listener `127.0.0.1:port`.
    pub http: String,
    args: Vec<String>,
}

/// The `riffle` binary for tests outside the broker crate: `$RIFFLE_BIN`, else the build
/// next to the running test (`target/<profile>/deps/<test>` → `target/<profile>/riffle`).
pub fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RIFFLE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("riffle"))
        .expect("target dir")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestBroker {
    /// Starts the broker binary at `binary` with extra flags; waits until it accepts connections.
    pub fn start(binary: impl Into<PathBuf>, args: &[&str]) -> TestBroker {
        let binary = binary.into();
        // A port found free can be taken by another process before the broker binds it;
        // the broker then exits at once and is started again on other ports.
        for _ in 0..3 {
            let mut b = TestBroker::launch(binary.clone(), args);
            match b.serving() {
                Ok(()) => return b,
                Err(log) if log.contains("in use") => continue,
                Err(log) => panic!("broker exited:\n{log}"),
            }
        }
        panic!("no free ports for the broker after 3 attempts");
    }

    /// Starts the broker without waiting for it to serve (cluster members serve only once
    /// a quorum is up, so they are launched together and waited for afterwards).
    pub fn launch(binary: impl Into<PathBuf>, args: &[&str]) -> TestBroker {
        let mut b = TestBroker {
            child: None,
            binary: binary.into(),
            dir: tempfile::tempdir().expect("tempdir"),
            kafka: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        b.spawn_process();
        b
    }

    /// Process id of the running broker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (e.g. SIGSTOP, SIGCONT) to the running broker.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// Waits until the Kafka listener accepts connections.
    pub fn wait_serving(&mut self) {
        if let Err(log) = self.serving() {
            panic!("broker exited:\n{log}");
        }
    }

    /// Waits until the Kafka listener accepts connections; the log if the process exits.
    fn serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&self.kafka).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start:\n{}",
                self.log()
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("{status}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_serving();
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--listen",
                &self.kafka,
                "--advertised-listener",
                &self.kafka,
                "--http-listen",
                &self.http,
            ])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("broker running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the process again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the process again without waiting for it to serve.
    pub fn relaunch(&mut self) {
        self.kill9();
        self.spawn_process();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GETs an HTTP path on the broker's HTTP listener; returns (status, body).
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.http)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.http)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Opens a client connection.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.kafka).await.expect("connect")
    }

    /// Creates a topic and asserts success.
    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let mut c = self.connect().await;
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            );
        let resp = c
            .call(
                7,
                &CreateTopicsRequest::default()
                    .with_topics(vec![topic])
                    .with_timeout_ms(5000),
            )
            .await
            .expect("create topics");
        assert_eq!(
            resp.topics[0].error_code, 0,
            "{:?}",
            resp.topics[0].error_message
        );
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}
