//! Sign-in notices by e-mail (issue 15, point 4): one worker follows the log's
//! `notice.created` events from its checkpoint (`mail_progress`, channel `notices`), like the
//! webhook workers, never inside the writer's transaction. Each notice is mailed over SMTP
//! (`smtp_url`, `smtp_from`) to the address its user registered, with the device and place,
//! retried with the webhook backoff until the server accepts it; only then does the checkpoint
//! move past it. A user without an address, or a notice older than the notice window (a
//! server that was down, or mail configured later), is skipped. On PostgreSQL one node mails
//! at a time (the job lock `notice_mail`).

use super::{Deliverer, PAGE, to_std};
use crate::domain::Timestamp;
use crate::domain::event::{Event, user_stream};
use crate::domain::format_timestamp;
use crate::domain::notice::{NoticeCreated, NoticeReason};
use crate::store::{EventFilter, RecordedEvent, StoreError};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;
use tokio::sync::watch;

const CHANNEL: &str = "notices";
const JOB: &str = "notice_mail";

/// How notices are mailed: the SMTP transport and the sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// Notices older than this are not mailed any more.
    window: crate::domain::Duration,
    /// Where the account page is, for the mail's link.
    account_url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailer(from {})", self.from)
    }
}

impl Mailer {
    /// The mailer for `smtp_url` (`smtp://`, `smtps://`, `?tls=required`) and `from`.
    pub fn new(
        smtp_url: &str,
        from: &str,
        timeout: std::time::Duration,
        window: crate::domain::Duration,
        account_url: String,
    ) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|e| format!("smtp_url: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("smtp_from: {e}"))?;
        Ok(Mailer {
            transport,
            from,
            window,
            account_url,
        })
    }
}

/// The mail for one notice: device and place in the body, no address or User-Agent beyond
/// what the user needs to recognise the sign-in.
pub fn compose(n: &NoticeCreated, at: Timestamp, account_url: &str) -> (String, String) {
    let what = match (
        n.reasons.contains(&NoticeReason::NewDevice),
        n.reasons.contains(&NoticeReason::NewCountry),
    ) {
        (true, true) => "a new device in a new country",
        (true, false) => "a new device",
        _ => "a new country",
    };
    let device = n
        .device
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |d| d.describe());
    let geo = n.context.geo.as_ref();
    let city = geo
        .and_then(|g| g.city.as_deref())
        .filter(|c| !c.starts_with('['));
    let place = match (city, n.country.as_deref()) {
        (Some(city), Some(country)) => format!("{city}, {country}"),
        (None, Some(country)) => country.to_owned(),
        (Some(city), None) => city.to_owned(),
        (None, None) => "unknown".to_owned(),
    };
    let subject = format!("New sign-in to your account from {what}");
    let body = format!(
        "Your account was signed in to from {what}.\n\n\
         Device: {device}\n\
         Place: {place}\n\
         Time: {}\n\n\
         If this was you, choose \"This was me\" on your account page; sign-ins from this \
         device and network stay quiet for a while.\n\
         If it was not, choose \"This wasn't me\": every session ends and the password must \
         be changed before the next sign-in.\n\n\
         {account_url}\n",
        format_timestamp(at)
    );
    (subject, body)
}

/// Mails notices until `stop` turns true.
pub(super) async fn deliver(
    app: Arc<Deliverer>,
    mailer: Arc<Mailer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut committed = app.commits.clone();
    let mut writer_alive = true;
    let poll = to_std(app.config.webhook_poll_interval);
    loop {
        if *stop.borrow() {
            return;
        }
        let sent = match app.store.try_job_lock(JOB).await {
            Ok(Some(lock)) => {
                let r = mail_page(&app, &mailer, &mut stop).await;
                lock.release().await;
                r
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        let more = match sent {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "notice mail: cannot read the log");
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = committed.changed(), if writer_alive => writer_alive = r.is_ok(),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Mails one page of notices after the checkpoint; true when there may be more.
async fn mail_page(
    app: &Deliverer,
    mailer: &Mailer,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, StoreError> {
    let checkpoint = app.store.mail_checkpoint(CHANNEL).await?.unwrap_or(0);
    let page = app
        .store
        .events(&EventFilter {
            after_position: checkpoint,
            event_types: vec!["notice.created".into()],
            limit: Some(PAGE),
            ..Default::default()
        })
        .await?;
    for event in &page {
        if !mail_one(app, mailer, event, stop).await? {
            return Ok(false);
        }
    }
    Ok(!page.is_empty())
}

/// Mails one notice until the server accepts it; false when delivery was stopped first.
async fn mail_one(
    app: &Deliverer,
    mailer: &Mailer,
    event: &RecordedEvent,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, StoreError> {
    let Ok(Event::NoticeCreated(n)) = event.decode() else {
        return skip(app, event).await;
    };
    let at = event.occurred_at()?;
    if at < app.clock.now() - mailer.window {
        return skip(app, event).await;
    }
    let Some(to) = address_of(app, &n).await? else {
        return skip(app, event).await;
    };
    let (subject, body) = compose(&n, at, &mailer.account_url);
    let message = Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let Ok(message) = message else {
        return skip(app, event).await;
    };
    let mut delay = to_std(app.config.webhook_retry_initial);
    let max = to_std(app.config.webhook_retry_max);
    loop {
        let result = tokio::select! {
            r = mailer.transport.send(message.clone()) => r,
            _ = stop.wait_for(|s| *s) => return Ok(false),
        };
        let now = app.clock.now();
        match result {
            Ok(_) => {
                crate::metrics::notice_mail("mailed");
                app.store
                    .record_mail_attempt(CHANNEL, event.position, None, now)
                    .await?;
                return Ok(true);
            }
            Err(e) => {
                // The server's answer, never the address or the message.
                let why = if e.is_permanent() {
                    "the mail server refused the message"
                } else if e.is_transient() {
                    "the mail server deferred the message"
                } else {
                    "cannot reach the mail server"
                };
                crate::metrics::notice_mail("mail_failed");
                tracing::warn!(position = event.position, error = why, "notice mail failed");
                app.store
                    .record_mail_attempt(CHANNEL, event.position - 1, Some(why), now)
                    .await?;
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(false),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max);
    }
}

/// Moves the checkpoint past an event that is not mailed.
async fn skip(app: &Deliverer, event: &RecordedEvent) -> Result<bool, StoreError> {
    app.store
        .record_mail_attempt(CHANNEL, event.position, None, app.clock.now())
        .await?;
    Ok(true)
}

/// The address the notice's user registered, if any (read through the vault).
async fn address_of(app: &Deliverer, n: &NoticeCreated) -> Result<Option<Mailbox>, StoreError> {
    let registered = app
        .store
        .events(&EventFilter {
            stream_id: Some(user_stream(n.user_id)),
            event_types: vec!["user.registered".into()],
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    let email = registered.first().and_then(|e| match e.decode() {
        Ok(Event::UserRegistered(u)) => u.email,
        _ => None,
    });
    Ok(email.and_then(|a| a.parse::<Mailbox>().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::context::{Geo, RequestContext};
    use crate::domain::notice::DeviceClass;
    use uuid::Uuid;

    #[test]
    fn the_mail_names_the_device_and_the_place() {
        let n = NoticeCreated {
            notice_id: Uuid::nil(),
            user_id: Uuid::nil(),
            session_id: Uuid::nil(),
            reasons: vec![NoticeReason::NewCountry],
            device: Some(DeviceClass {
                category: "smartphone".into(),
                os: "iPhone".into(),
                browser: "Safari".into(),
            }),
            country: Some("GB".into()),
            networks: vec![],
            context: RequestContext {
                geo: Some(Geo {
                    city: Some("London".into()),
                    country: Some("GB".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let (subject, body) = compose(&n, chrono::Utc::now(), "https://id.example/account/");
        assert_eq!(subject, "New sign-in to your account from a new country");
        assert!(
            body.contains("Device: Safari on iPhone (smartphone)"),
            "{body}"
        );
        assert!(body.contains("Place: London, GB"), "{body}");
        assert!(body.contains("https://id.example/account/"), "{body}");
        // An erased city reads as its marker: the country alone is told.
        let mut erased = n;
        erased.context.geo.as_mut().unwrap().city = Some("[erased]".into());
        assert!(
            compose(&erased, chrono::Utc::now(), "")
                .1
                .contains("Place: GB\n")
        );
    }
}
