//! Personal data (issue 12): erasing a user and expiring request context past retention. Both
//! destroy data keys (see `store::vault`) in the transaction that records them; the events stay.

use super::recording::{append_all, end_sessions, record_user};
use super::writer::run_once_signed;
use super::{Command, Context};
use crate::domain::Timestamp;
use crate::domain::event::{
    Actor, Event, EventMetadata, LogResealed, MIGRATION_STREAM, PersonalDataExpired,
    RETENTION_STREAM, RevokeReason, UserErased,
};
use crate::domain::user;
use crate::store::vault;
use crate::store::{Resealed, Store, StoreError, UnitOfWork};
use crate::tokens::checkpoint::CheckpointKey;
use uuid::Uuid;

/// No such user, or one erased already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchUser;

/// Erases a user (GDPR art. 17): ends its sessions, destroys its data keys, redacts what its
/// projection rows keep, frees its name, and appends `user.erased`.
#[derive(Debug, Clone)]
pub struct EraseUser {
    pub user_id: Uuid,
}

impl Command for EraseUser {
    /// The sessions ended.
    type Reply = Result<Vec<Uuid>, NoSuchUser>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(NoSuchUser));
        };
        if user::is_erased(&user) {
            return Ok(Err(NoSuchUser));
        }
        let id = user.user_id;
        let ended = end_sessions(uow, id, None, RevokeReason::Admin, None, cx.meta, cx.now).await?;
        let keys = uow.erase_personal_data(id, &user.username, cx.now).await?;
        let event = Event::UserErased(UserErased {
            user_id: id,
            sessions: ended.clone(),
            keys,
        });
        let user = uow.user_by_id(id).await?;
        record_user(uow, user, id, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(ended))
    }
}

/// Retention of personal data: destroys the data keys of every period that ended before
/// `before`, and records `personal_data.expired` when there were any.
#[derive(Debug, Clone)]
pub struct ExpirePersonalData {
    pub before: Timestamp,
}

impl Command for ExpirePersonalData {
    /// Keys destroyed.
    type Reply = u64;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        // A period is past once it ended before the cutoff: every period before the cutoff's.
        let period = vault::period_of(self.before);
        let keys = uow.expire_personal_data(period, cx.now).await?;
        if keys > 0 {
            let event = Event::PersonalDataExpired(PersonalDataExpired {
                before: vault::period_start(period),
                keys,
            });
            let version = uow.stream_version(RETENTION_STREAM).await?;
            append_all(uow, RETENTION_STREAM, version, vec![event], cx.meta, cx.now).await?;
        }
        Ok(keys)
    }
}

/// `sessiond migrate`: seals the clear personal fields of history written by an older build,
/// re-chains the log from there and records `log.resealed` with the replaced head.
#[derive(Debug, Clone)]
pub struct ResealHistory;

impl Command for ResealHistory {
    type Reply = Option<Resealed>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(done) = uow.reseal_history().await? else {
            return Ok(None);
        };
        let event = Event::LogResealed(LogResealed {
            from_position: done.from_position,
            old_head_position: done.old_head.position,
            old_head_hash: crate::domain::token::hex(&done.old_head.hash),
            events: done.events,
        });
        let version = uow.stream_version(MIGRATION_STREAM).await?;
        append_all(uow, MIGRATION_STREAM, version, vec![event], cx.meta, cx.now).await?;
        Ok(Some(done))
    }
}

/// Runs [`ResealHistory`] in a transaction of its own (no writer runs during `migrate`).
/// The new head is signed in the same transaction: the old checkpoints signed hashes that
/// no longer exist.
pub async fn reseal_history(
    store: &Store,
    now: Timestamp,
    key: &CheckpointKey,
) -> Result<Option<Resealed>, StoreError> {
    let meta = EventMetadata::new(Actor::System, None);
    let command = ResealHistory;
    let key = Some(key);
    match store {
        Store::Sqlite(s) => {
            run_once_signed(&mut s.write_session().await?, command, &meta, now, key).await
        }
        Store::Postgres(p) => {
            run_once_signed(&mut p.write_session().await?, command, &meta, now, key).await
        }
    }
}
