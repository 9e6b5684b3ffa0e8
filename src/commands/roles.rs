//! A user's roles, changed through the log (`user.roles_changed`, projected onto `users.roles`).
//! Sessions keep the roles granted at their login.

use super::recording::record_user;
use super::{Command, Context};
use crate::domain::user::{self, User, UserError};
use crate::store::{StoreError, UnitOfWork};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRolesRefusal {
    UnknownUser,
    Invalid(UserError),
}

/// Replaces the roles of the user with this name (checked as at registration).
#[derive(Debug, Clone)]
pub struct SetRoles {
    pub username: String,
    pub roles: Vec<String>,
}

impl Command for SetRoles {
    /// The user as it now is (unchanged, and nothing recorded, if it had these roles).
    type Reply = Result<User, SetRolesRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Ok(name) = user::normalize_username(&self.username) else {
            return Ok(Err(SetRolesRefusal::UnknownUser));
        };
        let Some(user) = uow.user_by_name(&name).await? else {
            return Ok(Err(SetRolesRefusal::UnknownUser));
        };
        let events = match user.decide_set_roles(&self.roles) {
            Ok(events) => events,
            Err(e) => return Ok(Err(SetRolesRefusal::Invalid(e))),
        };
        if events.is_empty() {
            return Ok(Ok(user));
        }
        let id = user.user_id;
        let after = record_user(uow, Some(user), id, events, cx.meta, cx.now).await?;
        Ok(Ok(after.expect("a user with a stream stays a user")))
    }
}
