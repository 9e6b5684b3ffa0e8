//! Erasing a user (issue 12): one command through the writer, from the security API or the
//! command line, recorded with its actor.

use super::Sessiond;
use super::api_keys::Caller;
use crate::commands::EraseUser;
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, EventMetadata};
use crate::error::Error;
use uuid::Uuid;

impl Sessiond {
    /// Erases a user on behalf of the security team; returns the number of sessions ended.
    pub async fn admin_erase_user(
        &self,
        caller: &Caller,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<usize, Error> {
        self.erase_user(user_id, caller.actor(), ctx.request_id.clone())
            .await
    }

    /// Erases a user: its sessions end, its data keys are destroyed, `user.erased` is appended.
    /// An unknown (or already erased) user is `NotFound`.
    pub async fn erase_user(
        &self,
        user_id: Uuid,
        actor: Actor,
        request_id: Option<String>,
    ) -> Result<usize, Error> {
        let meta = EventMetadata::new(actor, request_id);
        match self.writer.submit(EraseUser { user_id }, meta).await? {
            Ok(ended) => Ok(ended.len()),
            Err(_) => Err(Error::NotFound),
        }
    }
}
