//! Channels: how a stored message reaches a person or the sales team.

pub mod email;
pub mod outbox;

use async_trait::async_trait;

use crate::store::StoredMessage;

pub use outbox::Outbox;

/// What a delivery attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Handed over now.
    Now,
    /// An earlier attempt already handed it over; nothing was sent again.
    Already,
}

/// A channel could not take the message; the worker retries the lead later.
#[derive(Debug, thiserror::Error)]
#[error("channel failed: {0}")]
pub struct ChannelError(pub String);

/// Delivers stored messages, at most once per idempotency key.
#[async_trait]
pub trait Deliverer: Send + Sync {
    /// Delivers one message; `display_name` is the person's name for the email header.
    async fn deliver(
        &self,
        message: &StoredMessage,
        display_name: Option<&str>,
    ) -> Result<Delivered, ChannelError>;
}
