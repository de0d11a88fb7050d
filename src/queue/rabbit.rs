//! The RabbitMQ queue, for production: any number of ingest and worker processes share
//! durable quorum queues.
//!
//! Topology (declared at start-up, idempotent):
//! - `<prefix>.leads`: quorum queue the workers consume with manual ack and bounded prefetch;
//! - `<prefix>.retry.<delay>ms`: one quorum queue per backoff step, whose message TTL sends
//!   expired messages back to `<prefix>.leads` through the default exchange (at-least-once
//!   dead-lettering), so a failed lead waits without holding a worker or an unacked delivery;
//! - `<prefix>.dead`: quorum queue of messages that ran out of attempts or can never be
//!   parsed, with the reason and attempt count in their headers.
//!
//! Ingest publishes persistent messages on one confirm-mode channel shared by all requests
//! and answers 202 only after the broker's confirm. Delivery keys live in the CRM database
//! (`DeliveryLog`). A supervisor task reconnects with backoff after a lost connection and
//! re-declares everything; meanwhile `enqueue` fails, which ingest answers with 503.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Mutex, Notify, RwLock, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{RabbitSettings, WorkerSettings};
use crate::queue::{
    Claim, DeadLetter, Delivery, DeliveryLog, Enqueued, NewMessage, Queue, QueueError, QueueStats,
    Retried, backoff,
};

const ATTEMPT_HEADER: &str = "x-nurture-attempt";
const REASON_HEADER: &str = "x-nurture-reason";
const EVENT_HEADER: &str = "x-nurture-event-id";

/// What a process does with the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes only (`nurture ingest`).
    Publish,
    /// Publishes and consumes (`nurture worker`, `nurture serve`).
    PublishAndConsume,
}

/// A live connection with its two channels.
struct Link {
    connection: Connection,
    publisher: Channel,
}

struct InFlight {
    acker: Acker,
}

/// RabbitMQ behind the `Queue` trait.
pub struct RabbitQueue {
    names: Names,
    settings: RabbitSettings,
    worker: WorkerSettings,
    log: Arc<dyn DeliveryLog>,
    link: RwLock<Option<Link>>,
    deliveries: Mutex<mpsc::Receiver<lapin::message::Delivery>>,
    delivered: Arc<Notify>,
    in_flight: Mutex<HashMap<i64, InFlight>>,
    next_handle: AtomicI64,
}

/// Queue names under the configured prefix.
#[derive(Debug, Clone)]
struct Names {
    leads: String,
    dead: String,
    prefix: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            leads: format!("{prefix}.leads"),
            dead: format!("{prefix}.dead"),
            prefix: prefix.to_owned(),
        }
    }

    fn retry(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}ms", self.prefix)
    }
}

impl RabbitQueue {
    /// Connects (retrying until `shutdown`), declares the topology and, for workers, starts
    /// consuming. A supervisor keeps the connection alive until `shutdown` fires.
    pub async fn start(
        url: &str,
        settings: RabbitSettings,
        worker: WorkerSettings,
        log: Arc<dyn DeliveryLog>,
        role: Role,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, QueueError> {
        let (sender, receiver) = mpsc::channel(usize::from(settings.prefetch.max(1)));
        let queue = Arc::new(Self {
            names: Names::new(&settings.queue_prefix),
            settings,
            worker,
            log,
            link: RwLock::new(None),
            deliveries: Mutex::new(receiver),
            delivered: Arc::new(Notify::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_handle: AtomicI64::new(1),
        });
        // A broker that is down at start-up is not fatal: the supervisor keeps trying, and
        // meanwhile ingest answers 503.
        if let Err(e) = queue.connect_once(url, role, &sender).await {
            warn!(error = %e, "BrokerUnavailableAtStart");
        }
        let supervisor = queue.clone();
        let url = url.to_owned();
        tokio::spawn(async move { supervisor.supervise(&url, role, sender, shutdown).await });
        Ok(queue)
    }

    async fn connect_once(
        &self,
        url: &str,
        role: Role,
        sender: &mpsc::Sender<lapin::message::Delivery>,
    ) -> Result<(), QueueError> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(amqp)?;
        let publisher = connection.create_channel().await.map_err(amqp)?;
        self.declare(&publisher).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp)?;
        if role == Role::PublishAndConsume {
            let consumer_channel = connection.create_channel().await.map_err(amqp)?;
            consumer_channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp)?;
            let mut consumer = consumer_channel
                .basic_consume(
                    self.names.leads.as_str().into(),
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp)?;
            let sender = sender.clone();
            let delivered = self.delivered.clone();
            tokio::spawn(async move {
                // Ends when the channel closes; the deliveries still in flight are then
                // redelivered by the broker to whichever consumer comes next.
                while let Some(Ok(delivery)) = consumer.next().await {
                    if sender.send(delivery).await.is_err() {
                        break;
                    }
                    delivered.notify_waiters();
                }
            });
        }
        *self.link.write().await = Some(Link {
            connection,
            publisher,
        });
        info!(queue = %self.names.leads, "BrokerConnected");
        Ok(())
    }

    async fn supervise(
        self: Arc<Self>,
        url: &str,
        role: Role,
        sender: mpsc::Sender<lapin::message::Delivery>,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if self.is_connected().await {
                failures = 0;
                continue;
            }
            *self.link.write().await = None;
            failures += 1;
            match self.connect_once(url, role, &sender).await {
                Ok(()) => info!(attempt = failures, "BrokerReconnected"),
                Err(e) => {
                    let delay = backoff::delay_ms(failures, 250, 5_000);
                    warn!(error = %e, delay_ms = delay, "BrokerReconnectFailed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    }
                }
            }
        }
        if let Some(link) = self.link.write().await.take() {
            let _ = link.connection.close(200, "shutdown".into()).await;
        }
    }

    async fn is_connected(&self) -> bool {
        self.link
            .read()
            .await
            .as_ref()
            .is_some_and(|l| l.connection.status().connected() && l.publisher.status().connected())
    }

    fn retry_delays(&self) -> Vec<u64> {
        retry_delays(&self.worker)
    }

    async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let quorum = |extra: &[(&str, AMQPValue)]| {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            for (key, value) in extra {
                args.insert((*key).into(), value.clone());
            }
            args
        };
        for name in [&self.names.leads, &self.names.dead] {
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    quorum(&[]),
                )
                .await
                .map_err(amqp)?;
        }
        for delay in self.retry_delays() {
            let args = quorum(&[
                ("x-message-ttl", AMQPValue::LongLongInt(delay as i64)),
                ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(self.names.leads.as_str().into()),
                ),
                (
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                ),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ]);
            channel
                .queue_declare(
                    self.names.retry(delay).into(),
                    QueueDeclareOptions::durable(),
                    args,
                )
                .await
                .map_err(amqp)?;
        }
        Ok(())
    }

    /// Publishes persistently and waits for the broker's confirm.
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: FieldTable,
        expiration_ms: Option<u64>,
    ) -> Result<(), QueueError> {
        self.try_publish(queue, payload, headers, expiration_ms)
            .await
            .map_err(PublishError::into_inner)
    }

    /// Publishes and tells a failure the broker certainly did not take (`Refused`) from one
    /// where the message may have landed anyway (`Uncertain`: the connection dropped or the
    /// confirm came late).
    async fn try_publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: FieldTable,
        expiration_ms: Option<u64>,
    ) -> Result<(), PublishError> {
        let publisher = {
            let link = self.link.read().await;
            let not_connected = || PublishError::Refused(QueueError("broker not connected".into()));
            link.as_ref().ok_or_else(not_connected)?.publisher.clone()
        };
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ms) = expiration_ms {
            properties = properties.with_expiration(ms.to_string().into());
        }
        let timeout = Duration::from_secs(self.settings.confirm_timeout_seconds);
        let confirmed = tokio::time::timeout(timeout, async {
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload,
                    properties,
                )
                .await
                .map_err(amqp)?;
            confirm.await.map_err(amqp)
        })
        .await
        .map_err(|_| {
            PublishError::Uncertain(QueueError(format!(
                "no publisher confirm within {timeout:?}"
            )))
        })?
        .map_err(PublishError::Uncertain)?;
        if confirmed.is_ack() {
            Ok(())
        } else {
            Err(PublishError::Refused(QueueError(
                "broker refused the message (nack)".into(),
            )))
        }
    }

    async fn take_in_flight(&self, delivery: &Delivery) -> Result<InFlight, QueueError> {
        self.in_flight
            .lock()
            .await
            .remove(&delivery.handle)
            .ok_or_else(|| QueueError(format!("delivery {} is not in flight", delivery.handle)))
    }

    /// Puts dead letters back on the leads queue with a fresh attempt count; `event_id =
    /// None` replays all. Returns how many were replayed.
    pub async fn replay_dead(&self, event_id: Option<&str>) -> Result<u64, QueueError> {
        let channel = self.admin_channel().await?;
        // At most what is there now: a replayed lead that fails again at once comes back to
        // the dead queue while this runs and must not be read again.
        let present = self.message_count(&channel, &self.names.dead).await?;
        let mut replayed = 0;
        let mut skipped = Vec::new();
        let mut read = 0;
        while read < present
            && let Some(message) = channel
                .basic_get(self.names.dead.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(amqp)?
        {
            read += 1;
            let delivery = message.delivery;
            let id = header_text(&delivery.properties, EVENT_HEADER).unwrap_or_default();
            if event_id.is_some_and(|wanted| wanted != id) {
                skipped.push(delivery.delivery_tag);
                continue;
            }
            let mut headers = FieldTable::default();
            headers.insert(
                EVENT_HEADER.into(),
                AMQPValue::LongString(id.as_str().into()),
            );
            self.publish(&self.names.leads, &delivery.data, headers, None)
                .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp)?;
            replayed += 1;
        }
        for tag in skipped {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                )
                .await
                .map_err(amqp)?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(replayed)
    }

    async fn admin_channel(&self) -> Result<Channel, QueueError> {
        let link = self.link.read().await;
        let link = link
            .as_ref()
            .ok_or_else(|| QueueError("broker not connected".into()))?;
        link.connection.create_channel().await.map_err(amqp)
    }

    async fn message_count(&self, channel: &Channel, queue: &str) -> Result<u64, QueueError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map_err(amqp)?;
        Ok(u64::from(declared.message_count()))
    }
}

/// Deletes every queue of the topology under `settings.queue_prefix` (for tests and for
/// tearing down a deployment); messages in them are lost.
pub async fn delete_topology(
    url: &str,
    settings: &RabbitSettings,
    worker: &WorkerSettings,
) -> Result<(), QueueError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(amqp)?;
    let channel = connection.create_channel().await.map_err(amqp)?;
    let names = Names::new(&settings.queue_prefix);
    let retries = retry_delays(worker).into_iter().map(|d| names.retry(d));
    for name in [names.leads.clone(), names.dead.clone()]
        .into_iter()
        .chain(retries)
    {
        channel
            .queue_delete(
                name.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .map_err(amqp)?;
    }
    let _ = connection.close(200, "deleted".into()).await;
    Ok(())
}

/// Delay of each retry step (one per attempt before the last), from the backoff settings.
fn retry_delays(w: &WorkerSettings) -> Vec<u64> {
    (1..w.max_attempts)
        .map(|attempt| backoff::ceiling_ms(attempt, w.backoff_base_ms, w.backoff_max_ms))
        .collect()
}

/// How a publish failed.
enum PublishError {
    /// The broker did not take the message (not connected, or a nack).
    Refused(QueueError),
    /// The message may have been taken (the connection dropped, or the confirm was late).
    Uncertain(QueueError),
}

impl PublishError {
    fn into_inner(self) -> QueueError {
        match self {
            PublishError::Refused(e) | PublishError::Uncertain(e) => e,
        }
    }
}

fn amqp(e: lapin::Error) -> QueueError {
    QueueError(format!("rabbitmq: {e}"))
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_number(properties: &BasicProperties, name: &str) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn headers(event_id: &str, attempt: u32, reason: Option<&str>) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(EVENT_HEADER.into(), AMQPValue::LongString(event_id.into()));
    table.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    if let Some(reason) = reason {
        table.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
    }
    table
}

/// The payload with another event id: used when an ingest process takes over a delivery
/// whose first publisher died before recording the broker's confirm, so that the pipeline
/// sees the same event and its idempotency keys hold.
fn with_event_id(payload: &[u8], event_id: &str) -> Result<Vec<u8>, QueueError> {
    let mut value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| QueueError(format!("payload is not JSON: {e}")))?;
    value["event_id"] = serde_json::Value::from(event_id);
    serde_json::to_vec(&value).map_err(|e| QueueError(e.to_string()))
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn enqueue(&self, message: NewMessage) -> Result<Enqueued, QueueError> {
        // A claim older than twice the confirm timeout belongs to a publisher that died.
        let stale_after_ms = self.settings.confirm_timeout_seconds as i64 * 2_000;
        let event_id = match self
            .log
            .claim(&message.dedup_keys, &message.event_id, stale_after_ms)
            .await?
        {
            Claim::Duplicate { event_id } => {
                self.log.count_duplicate().await?;
                return Ok(Enqueued::Duplicate { event_id });
            }
            Claim::InFlight => {
                return Err(QueueError(
                    "the same delivery is being queued right now".into(),
                ));
            }
            Claim::Claimed { event_id } => event_id,
        };
        let payload = if event_id == message.event_id {
            message.payload
        } else {
            with_event_id(&message.payload, &event_id)?
        };
        let published = self
            .try_publish(
                &self.names.leads,
                &payload,
                headers(&event_id, 0, None),
                None,
            )
            .await;
        match published {
            Ok(()) => {}
            Err(PublishError::Refused(e)) => {
                self.log.release(&message.dedup_keys, &event_id).await?;
                return Err(e);
            }
            // The message may be in the queue: the claim stays pending under this event id,
            // so the sender's retry takes it over with the same id once it is stale and the
            // pipeline sees one event, however many copies the broker holds.
            Err(PublishError::Uncertain(e)) => return Err(e),
        }
        self.log.confirm(&message.dedup_keys, &event_id).await?;
        Ok(Enqueued::Queued { event_id })
    }

    async fn lease(&self) -> Result<Option<Delivery>, QueueError> {
        let Ok(raw) = self.deliveries.lock().await.try_recv() else {
            return Ok(None);
        };
        let previous = header_number(&raw.properties, ATTEMPT_HEADER)
            .unwrap_or(0)
            .max(0) as u32;
        let event_id = header_text(&raw.properties, EVENT_HEADER).unwrap_or_default();
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let delivery = Delivery {
            handle,
            event_id,
            payload: raw.data,
            attempt: previous + 1,
        };
        self.in_flight
            .lock()
            .await
            .insert(handle, InFlight { acker: raw.acker });
        Ok(Some(delivery))
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        if !self.deliveries.lock().await.is_empty() {
            return;
        }
        let _ = tokio::time::timeout(
            max_wait.min(Duration::from_millis(50)),
            self.delivered.notified(),
        )
        .await;
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let in_flight = self.take_in_flight(delivery).await?;
        in_flight
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp)?;
        Ok(())
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        reason: &str,
        at_least: Option<std::time::Duration>,
    ) -> Result<Retried, QueueError> {
        if delivery.attempt >= self.worker.max_attempts {
            self.dead_letter(delivery, reason).await?;
            return Ok(Retried::DeadLettered);
        }
        let delays = self.retry_delays();
        let by_attempt = delays[(delivery.attempt as usize)
            .saturating_sub(1)
            .min(delays.len() - 1)];
        let at_least_ms = at_least.map_or(0, |d| d.as_millis() as u64);
        // A provider's "come back in N s" picks the first step at least that long (the
        // longest step when none is).
        let step = if at_least_ms > by_attempt {
            delays
                .iter()
                .copied()
                .find(|d| *d >= at_least_ms)
                .unwrap_or(delays[delays.len() - 1])
        } else {
            by_attempt
        };
        // The step's queue TTL is the cap; a per-message expiration in its upper half is the
        // jitter, so leads that failed together do not all return together.
        let floor = (step / 2).max(at_least_ms.min(step));
        let delay_ms = rand::Rng::random_range(&mut rand::rng(), floor..=step);
        let headers = headers(&delivery.event_id, delivery.attempt, Some(reason));
        // Published before the ack: a crash in between leaves two copies (the pipeline is
        // idempotent), never none.
        self.publish(
            &self.names.retry(step),
            &delivery.payload,
            headers,
            Some(delay_ms),
        )
        .await?;
        self.ack(delivery).await?;
        Ok(Retried::Scheduled { delay_ms })
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let headers = headers(&delivery.event_id, delivery.attempt, Some(reason));
        self.publish(&self.names.dead, &delivery.payload, headers, None)
            .await?;
        self.ack(delivery).await
    }

    async fn replay_dead(&self, event_id: Option<&str>) -> Result<u64, QueueError> {
        RabbitQueue::replay_dead(self, event_id).await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, QueueError> {
        // Read without acking; closing the channel puts every message back in order.
        let channel = self.admin_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit as usize {
            let Some(message) = channel
                .basic_get(self.names.dead.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(amqp)?
            else {
                break;
            };
            let p = &message.delivery.properties;
            letters.push(DeadLetter {
                handle: message.delivery.delivery_tag as i64,
                event_id: header_text(p, EVENT_HEADER).unwrap_or_default(),
                attempts: header_number(p, ATTEMPT_HEADER).unwrap_or(0).max(0) as u32,
                reason: header_text(p, REASON_HEADER).unwrap_or_default(),
            });
        }
        let _ = channel.close(200, "listed".into()).await;
        Ok(letters)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (received, duplicates) = self.log.intake_counts().await?;
        let channel = self.admin_channel().await?;
        let mut depth = self.message_count(&channel, &self.names.leads).await?;
        for delay in self.retry_delays() {
            depth += self
                .message_count(&channel, &self.names.retry(delay))
                .await?;
        }
        // Ready messages only; deliveries held by this process are added, those held by other
        // worker processes are not (AMQP does not report them).
        depth += self.in_flight.lock().await.len() as u64;
        depth += self.deliveries.lock().await.len() as u64;
        let dead_lettered = self.message_count(&channel, &self.names.dead).await?;
        let _ = channel.close(200, "stats".into()).await;
        Ok(QueueStats {
            received,
            duplicates,
            dead_lettered,
            depth,
        })
    }
}
