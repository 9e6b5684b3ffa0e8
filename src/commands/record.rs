//! Appending events to a stream that has no aggregate, at its current version.

use super::recording::append_all;
use super::{Command, Context};
use crate::domain::event::Event;
use crate::store::{StoreError, UnitOfWork};

#[derive(Debug, Clone)]
pub struct Record {
    pub stream_id: String,
    pub events: Vec<Event>,
}

impl Command for Record {
    type Reply = ();

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let version = uow.stream_version(&self.stream_id).await?;
        append_all(uow, &self.stream_id, version, self.events, cx.meta, cx.now).await
    }
}
