//! Builds RFC 5322 email with lettre, so that names and subjects are encoded by the library
//! and no header is ever assembled by hand.

use lettre::Message;
use lettre::message::{Mailbox, header::ContentType};

use crate::channels::ChannelError;
use crate::store::StoredMessage;

/// Renders a stored email message as the bytes of an `.eml` file.
///
/// The Message-ID is derived from the idempotency key, so a mail system downstream can
/// recognise a repeat too.
pub fn render_eml(
    from: &str,
    message: &StoredMessage,
    display_name: Option<&str>,
) -> Result<Vec<u8>, ChannelError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ChannelError(format!("{what}: {e}"));
    let from: Mailbox = from
        .parse()
        .map_err(|e| fail("invalid compose.email_from", &e))?;
    let address = message
        .recipient
        .parse()
        .map_err(|e| fail("invalid recipient address", &e))?;
    let name = display_name.map(header_safe).filter(|n| !n.is_empty());
    let email = Message::builder()
        .from(from)
        .to(Mailbox::new(name, address))
        .subject(header_safe(message.subject.as_deref().unwrap_or_default()))
        .message_id(Some(format!("<{}@nurture.local>", message.idempotency_key)))
        .header(ContentType::TEXT_PLAIN)
        .body(message.body.clone())
        .map_err(|e| fail("cannot build email", &e))?;
    Ok(email.formatted())
}

/// Drops control characters and bidirectional overrides, which have no place in a header
/// (CR/LF were already refused at ingest; this is the second line of defence).
fn header_safe(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(*c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(recipient: &str) -> StoredMessage {
        StoredMessage {
            id: 1,
            idempotency_key: "evt-email".into(),
            channel: "email".into(),
            track: "drip".into(),
            template: "drip/email.txt".into(),
            recipient: recipient.into(),
            subject: Some("Hello".into()),
            body: "Body\nUnsubscribe".into(),
            status: "pending".into(),
        }
    }

    #[test]
    fn a_hostile_display_name_cannot_add_headers() {
        let eml = render_eml(
            "Example <hello@example.com>",
            &message("eve@example.com"),
            Some("Eve\r\nBcc: victim@example.net \u{202E}x"),
        )
        .unwrap();
        let text = String::from_utf8(eml).unwrap();

        assert!(
            !text
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{text}"
        );
        assert!(text.contains("Message-ID: <evt-email@nurture.local>"));
        assert!(!text.contains('\u{202E}'));
    }
}
