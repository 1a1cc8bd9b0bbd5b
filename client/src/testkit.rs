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
        let mut b = TestBroker {
            child: None,
            binary: binary.into(),
            dir: tempfile::tempdir().expect("tempdir"),
            kafka: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        b.spawn();
        b
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.kafka).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Starts the process again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
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
