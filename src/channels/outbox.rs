//! The embedded channels: every message becomes a file under `<data-dir>/outbox/<channel>/`
//! named by its idempotency key. Email is an `.eml` file; SMS and Slack are JSON in the
//! shape their APIs take. A file is never overwritten, so a key is delivered at most once.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;

use crate::channels::{ChannelError, Delivered, Deliverer, email};
use crate::store::StoredMessage;

/// Writes messages as files.
pub struct Outbox {
    root: PathBuf,
    email_from: String,
}

impl Outbox {
    /// Creates the outbox folders under `data_dir` and clears half-written files that a crash
    /// left more than an hour ago (never linked into place, so nothing was delivered). Newer
    /// ones may belong to another worker sharing the folder, writing right now.
    pub fn open(data_dir: &Path, email_from: &str) -> Result<Self, ChannelError> {
        let root = data_dir.join("outbox");
        let io = |e: std::io::Error| ChannelError(format!("outbox: {e}"));
        for sub in ["email", "sms", "slack", ".partial"] {
            std::fs::create_dir_all(root.join(sub)).map_err(io)?;
        }
        let an_hour = std::time::Duration::from_secs(3600);
        for entry in std::fs::read_dir(root.join(".partial")).map_err(io)? {
            let entry = entry.map_err(io)?;
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default());
            if age.is_ok_and(|age| age > an_hour) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            root,
            email_from: email_from.to_owned(),
        })
    }

    /// Where a message's file lives.
    pub fn path_of(&self, message: &StoredMessage) -> PathBuf {
        let extension = if message.channel == "email" {
            "eml"
        } else {
            "json"
        };
        let name = format!("{}.{extension}", safe_name(&message.idempotency_key));
        self.root.join(&message.channel).join(name)
    }

    fn content(
        &self,
        message: &StoredMessage,
        display_name: Option<&str>,
    ) -> Result<Vec<u8>, ChannelError> {
        let value = match message.channel.as_str() {
            "email" => return email::render_eml(&self.email_from, message, display_name),
            "sms" => json!({
                "To": message.recipient,
                "Body": message.body,
                "IdempotencyKey": message.idempotency_key,
            }),
            "slack" => json!({
                "channel": message.recipient,
                "text": message.body,
                "client_msg_id": message.idempotency_key,
            }),
            other => return Err(ChannelError(format!("unknown channel '{other}'"))),
        };
        Ok(serde_json::to_vec_pretty(&value).unwrap_or_default())
    }
}

/// Writes `bytes` to `target` only if no file is there: the bytes go to a partial file,
/// are synced, then hard-linked into place, which fails when the target exists. A crash at
/// any point leaves either no target or a complete one.
fn write_once(partial_dir: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<Delivered> {
    if target.exists() {
        return Ok(Delivered::Already);
    }
    let partial = partial_dir.join(format!("{}.{}", uuid::Uuid::now_v7(), std::process::id()));
    let mut file = std::fs::File::create_new(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&partial, target);
    std::fs::remove_file(&partial)?;
    match linked {
        Ok(()) => Ok(Delivered::Now),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Delivered::Already),
        Err(e) => Err(e),
    }
}

fn safe_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[async_trait]
impl Deliverer for Outbox {
    async fn deliver(
        &self,
        message: &StoredMessage,
        display_name: Option<&str>,
    ) -> Result<Delivered, ChannelError> {
        let bytes = self.content(message, display_name)?;
        let target = self.path_of(message);
        let partial_dir = self.root.join(".partial");
        tokio::task::spawn_blocking(move || write_once(&partial_dir, &target, &bytes))
            .await
            .map_err(|e| ChannelError(format!("outbox task: {e}")))?
            .map_err(|e| ChannelError(format!("outbox write: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_write_of_the_same_key_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.json");

        let first = write_once(dir.path(), &target, b"one").unwrap();
        let second = write_once(dir.path(), &target, b"two").unwrap();

        assert_eq!((first, second), (Delivered::Now, Delivered::Already));
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn opening_keeps_a_fresh_partial_file_another_worker_may_be_writing() {
        let dir = tempfile::tempdir().unwrap();
        Outbox::open(dir.path(), "A <a@example.com>").unwrap();
        let partial = dir.path().join("outbox/.partial/in-progress");
        std::fs::write(&partial, b"half").unwrap();

        Outbox::open(dir.path(), "A <a@example.com>").unwrap();

        assert!(partial.exists());
    }
}
