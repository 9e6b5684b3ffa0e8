//! Analyst verdicts on alerts (issue 15, point 5): a receipt marked a true or a false positive,
//! and for a false positive, optionally, an exception for that rule and that user, all in one
//! command.

use super::judge::usual_tags;
use super::recording::record_user;
use super::{Command, Context};
use crate::domain::Duration;
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, rule_stream};
use crate::domain::notice::{self, ExceptionAdded};
use crate::domain::verdict::{self, Verdict, VerdictRefusal};
use crate::projection;
use crate::store::{NewEvent, StoreError, UnitOfWork};
use uuid::Uuid;

/// Records an analyst's verdict on the alert at `position`. `context` is the request context
/// the rule judged (from the receipt): the exception is for its device class and networks.
#[derive(Debug, Clone)]
pub struct RecordVerdict {
    pub position: i64,
    pub verdict: Verdict,
    pub exception: Option<Duration>,
    pub note: Option<String>,
    pub context: Option<RequestContext>,
}

impl Command for RecordVerdict {
    /// The exception added, if any.
    type Reply = Result<Option<ExceptionAdded>, VerdictRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let alert = uow.alert_at(self.position).await?;
        let (device, networks) = match &self.context {
            Some(c) => (
                notice::device_class(c),
                usual_tags(cx.rules, c)
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect(),
            ),
            None => (None, Vec::new()),
        };
        let decided = verdict::decide_verdict(
            alert.as_ref(),
            self.verdict,
            self.exception,
            self.note,
            device,
            networks,
            Uuid::new_v4(),
            cx.now,
        );
        let (recorded, exception) = match decided {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let stream = rule_stream(recorded.receipt_id);
        let version = uow.stream_version(&stream).await?;
        let event = Event::AlertVerdictRecorded(recorded);
        let appended = uow
            .append(NewEvent {
                stream_id: stream.clone(),
                expected_version: version,
                event: event.clone(),
                metadata: cx.meta.clone(),
                occurred_at: cx.now,
            })
            .await?;
        projection::apply_alert(uow, appended.position, &stream, &event, cx.now).await?;
        if let Some(e) = &exception {
            let user = uow.user_by_id(e.user_id).await?;
            record_user(
                uow,
                user,
                e.user_id,
                vec![Event::ExceptionAdded(e.clone())],
                cx.meta,
                cx.now,
            )
            .await?;
        }
        Ok(Ok(exception))
    }
}
