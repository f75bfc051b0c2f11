//! The dead-letter topic: messages that cannot be applied, with headers naming why and where
//! they came from, so nothing stalls the partition and nothing vanishes.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::decode::Message;

/// Header names on dead-letter messages.
pub mod headers {
    /// Why the message could not be applied.
    pub const ERROR: &str = "cdcsync.error";
    /// `decode` (not a valid change event) or `postgres` (PostgreSQL rejected a value).
    pub const ERROR_KIND: &str = "cdcsync.error_kind";
    /// The table topic the message came from.
    pub const TOPIC: &str = "cdcsync.source_topic";
    /// Its partition (decimal).
    pub const PARTITION: &str = "cdcsync.source_partition";
    /// Its offset (decimal).
    pub const OFFSET: &str = "cdcsync.source_offset";
}

/// Producer for the dead-letter topic.
pub struct DeadLetters {
    producer: FutureProducer,
    /// The topic.
    pub topic: String,
}

impl DeadLetters {
    /// Creates the producer (idempotent, acks=all) and the topic if it does not exist.
    pub async fn new(base: &ClientConfig, topic: String, replication: i32) -> Result<Self, String> {
        let admin: AdminClient<DefaultClientContext> = base.create().map_err(|e| e.to_string())?;
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(replication));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics([&new], &opts).await {
            Ok(results) => {
                for r in results {
                    if let Err((t, code)) = r {
                        if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                            return Err(format!("cannot create dead-letter topic {t}: {code}"));
                        }
                    }
                }
            }
            Err(e) => return Err(format!("cannot create dead-letter topic {topic}: {e}")),
        }
        let mut cfg = base.clone();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = cfg.create().map_err(|e| e.to_string())?;
        Ok(DeadLetters { producer, topic })
    }

    /// Sends `msg` with error headers and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        source_topic: &str,
        partition: i32,
        msg: &Message,
        kind: &str,
        error: &str,
    ) -> Result<(), String> {
        let part = partition.to_string();
        let off = msg.offset.to_string();
        let h = OwnedHeaders::new()
            .insert(Header {
                key: headers::ERROR,
                value: Some(error),
            })
            .insert(Header {
                key: headers::ERROR_KIND,
                value: Some(kind),
            })
            .insert(Header {
                key: headers::TOPIC,
                value: Some(source_topic),
            })
            .insert(Header {
                key: headers::PARTITION,
                value: Some(&part),
            })
            .insert(Header {
                key: headers::OFFSET,
                value: Some(&off),
            });
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(h);
        if let Some(k) = &msg.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = &msg.payload {
            rec = rec.payload(p.as_slice());
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}
