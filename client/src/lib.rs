//! A minimal async Kafka protocol client: one connection, typed requests and responses
//! (codecs from `kafka-protocol`), plus helpers to build record batches.

pub mod admin;
#[cfg(feature = "testkit")]
pub mod testkit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error (includes the broker closing the connection).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Encoding or decoding failed.
    #[error("codec: {0}")]
    Codec(String),
    /// The response answered another request.
    #[error("correlation id mismatch: sent {sent}, got {got}")]
    Correlation {
        /// Id sent.
        sent: i32,
        /// Id received.
        got: i32,
    },
}

/// One connection to a broker.
pub struct Connection {
    stream: TcpStream,
    next_correlation: i32,
    client_id: String,
}

impl Connection {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            next_correlation: 1,
            client_id: "riffle-client".into(),
        })
    }

    /// Encodes a request frame without sending it; returns the frame and its correlation id.
    pub fn encode<R: Request>(
        &mut self,
        version: i16,
        req: &R,
    ) -> Result<(Bytes, i32), ClientError> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        req.encode(&mut buf, version)
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok((buf.freeze(), correlation_id))
    }

    /// Writes raw bytes to the socket.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one response frame and decodes it as `R::Response`.
    pub async fn receive<R: Request>(
        &mut self,
        version: i16,
        correlation_id: i32,
    ) -> Result<R::Response, ClientError> {
        let mut body = self.read_frame().await?;
        let header = ResponseHeader::decode(&mut body, response_header_version::<R>(version))
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        if header.correlation_id != correlation_id {
            return Err(ClientError::Correlation {
                sent: correlation_id,
                got: header.correlation_id,
            });
        }
        R::Response::decode(&mut body, version).map_err(|e| ClientError::Codec(e.to_string()))
    }

    /// Reads one size-prefixed frame.
    pub async fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        let len = self.stream.read_i32().await?;
        if len < 0 {
            return Err(ClientError::Codec(format!("negative frame size {len}")));
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf).await?;
        Ok(Bytes::from(buf))
    }

    /// Sends a request and waits for its response.
    pub async fn call<R: Request>(
        &mut self,
        version: i16,
        req: &R,
    ) -> Result<R::Response, ClientError> {
        let (frame, corr) = self.encode(version, req)?;
        self.send_raw(&frame).await?;
        self.receive::<R>(version, corr).await
    }
}

/// Response header version for a request type (ApiVersions always uses v0).
fn response_header_version<R: Request>(version: i16) -> i16 {
    match kafka_protocol::messages::ApiKey::try_from(R::KEY) {
        Ok(k) => k.response_header_version(version),
        Err(_) => 0,
    }
}

/// One record to put in a batch.
#[derive(Debug, Clone, Default)]
pub struct NewRecord {
    /// Key (None = null).
    pub key: Option<Bytes>,
    /// Value (None = tombstone).
    pub value: Option<Bytes>,
    /// Timestamp in ms.
    pub timestamp: i64,
}

/// Idempotence fields of a batch.
#[derive(Debug, Clone, Copy)]
pub struct ProducerFields {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
}

/// Encodes records as one v2 record batch.
pub fn encode_batch(
    records: &[NewRecord],
    compression: Compression,
    producer: Option<ProducerFields>,
) -> Result<Bytes, ClientError> {
    let (id, epoch, seq) = producer
        .map(|p| (p.id, p.epoch, p.base_sequence))
        .unwrap_or((-1, -1, -1));
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch only when offset - sequence is constant.
            sequence: if seq < 0 { i as i32 } else { seq + i as i32 },
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| ClientError::Codec(e.to_string()))?;
    Ok(buf.freeze())
}

/// A fetched record: (offset, key, value, timestamp).
pub type FetchedRecord = (i64, Option<Bytes>, Option<Bytes>, i64);

/// Decodes every record in a fetched record set.
pub fn decode_records(mut records: Bytes) -> Result<Vec<FetchedRecord>, ClientError> {
    let mut out = Vec::new();
    while records.has_remaining() {
        let sets = kafka_protocol::records::RecordBatchDecoder::decode(&mut records)
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        out.extend(
            sets.records
                .into_iter()
                .map(|r| (r.offset, r.key, r.value, r.timestamp)),
        );
    }
    Ok(out)
}
