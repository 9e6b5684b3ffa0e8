//! What the writer can be asked to do. Each command loads the state it needs inside the
//! transaction, asks the domain to decide, appends the events and updates the inline projections,
//! all through [`UnitOfWork`], so every backend runs the same logic.

use super::{PruneCounts, StoreError, UnitOfWork};
use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::event::{
    Event, EventMetadata, LoginFailure, RETENTION_STREAM, RetentionPruned, RevokeReason,
    login_attempt_stream,
};
use crate::domain::session::{
    self, PresentedToken, RefreshGrant, Refusal, Session, SessionPolicy, StartSession,
};
use crate::domain::token::TokenKey;
use crate::domain::user::{self, Register, User, UserError};
use crate::rules::enforce::{carry_out, judge, session_facts};
use crate::rules::{Facts, RuleEngine, Trigger};
use uuid::Uuid;

mod recording;
pub(crate) use recording::{append_all, end_sessions, record_session, record_user};
use recording::{load_session, record_ending};

#[derive(Debug, Clone)]
pub enum Command {
    Register(RegisterUser),
    StartSession {
        user_id: Uuid,
        session_id: Uuid,
        scope: String,
        roles: Vec<String>,
        token: TokenKey,
        context: RequestContext,
    },
    RecordLoginFailure {
        username: String,
        reason: LoginFailure,
        context: RequestContext,
    },
    Refresh {
        presented: TokenKey,
        new_token: TokenKey,
        context: RequestContext,
    },
    /// Ends one session. With `owner`, only if the session belongs to that user.
    EndSession {
        session_id: Uuid,
        owner: Option<Uuid>,
        reason: RevokeReason,
        context: Option<RequestContext>,
    },
    /// Ends the session a refresh token belongs to (logout by refresh token).
    EndSessionByToken {
        presented: TokenKey,
        context: RequestContext,
    },
    /// Ends every active session of a user but `except`.
    LogoutEverywhere {
        user_id: Uuid,
        except: Option<Uuid>,
        context: Option<RequestContext>,
    },
    ChangePassword {
        user_id: Uuid,
        password_hash: String,
        keep_session: Option<Uuid>,
        context: RequestContext,
    },
    RequireReauth {
        session_id: Uuid,
        reason: String,
    },
    /// Locks a user (every session ends, reason `admin`) or unlocks one.
    SetLock {
        user_id: Uuid,
        lock: bool,
        reason: String,
        context: Option<RequestContext>,
    },
    /// The holder of the current refresh token proved the password again (checked by the
    /// caller): the session may refresh again.
    Reauthenticate {
        presented: TokenKey,
        context: RequestContext,
    },
    /// Records expiry of a session whose lifetime ran out (the sweep).
    ExpireIfDue {
        session_id: Uuid,
    },
    /// Retention: deletes the projection rows of sessions that ended before `ended_before` and
    /// records `retention.pruned` when there were any.
    PruneEndedSessions {
        ended_before: Timestamp,
    },
    /// Appends events to a stream that has no aggregate (signing keys), at its current version.
    Record {
        stream_id: String,
        events: Vec<Event>,
    },
}

impl Command {
    /// The refresh token this command will look up, if any.
    pub fn presented_token(&self) -> Option<&TokenKey> {
        match self {
            Command::Refresh { presented, .. }
            | Command::EndSessionByToken { presented, .. }
            | Command::Reauthenticate { presented, .. } => Some(presented),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegisterUser {
    pub user_id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub context: RequestContext,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Registered(User),
    SessionStarted(Session),
    Refreshed {
        session: Session,
        grant: RefreshGrant,
    },
    /// Sessions that this command ended (empty if they had already ended).
    SessionsEnded(Vec<Uuid>),
    PasswordChanged {
        ended: Vec<Uuid>,
    },
    Recorded,
    Pruned(PruneCounts),
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    User(UserError),
    UnknownUser,
    UserLocked,
    UnknownToken,
    UnknownSession,
    Session(Refusal),
}

pub async fn execute<U: UnitOfWork>(
    uow: &mut U,
    command: Command,
    meta: &EventMetadata,
    now: Timestamp,
    policy: &SessionPolicy,
    rules: &RuleEngine,
) -> Result<Reply, StoreError> {
    match command {
        Command::Register(cmd) => {
            let name = match user::normalize_username(&cmd.username) {
                Ok(n) => n,
                Err(e) => return Ok(Reply::Rejected(Rejection::User(e))),
            };
            let taken = uow.user_by_name(&name).await?.is_some();
            let register = Register {
                user_id: cmd.user_id,
                username: name,
                password_hash: cmd.password_hash,
                roles: cmd.roles,
                context: cmd.context,
            };
            match user::decide_register(register, taken) {
                Err(e) => Ok(Reply::Rejected(Rejection::User(e))),
                Ok(event) => {
                    let user = record_user(uow, None, cmd.user_id, vec![event], meta, now).await?;
                    Ok(Reply::Registered(
                        user.expect("registration creates the user"),
                    ))
                }
            }
        }

        Command::StartSession {
            user_id,
            session_id,
            scope,
            roles,
            token,
            context,
        } => {
            let Some(user) = uow.user_by_id(user_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownUser));
            };
            if !user.can_log_in() {
                return Ok(Reply::Rejected(Rejection::UserLocked));
            }
            let facts = Facts {
                trigger: Trigger::SessionStarted,
                now,
                user_id: Some(user_id),
                username: Some(&user.username),
                session_id: Some(session_id),
                context: &context,
                session_login: None,
                session_last: None,
            };
            if let Some(j) = judge(uow, rules, &facts).await?
                && carry_out(uow, j, Some(user_id), None, meta, now)
                    .await?
                    .is_some()
            {
                return Ok(Reply::Rejected(Rejection::Session(Refusal::Denied)));
            }
            let start = StartSession {
                session_id,
                user_id,
                scope,
                roles,
                token,
                context,
            };
            let event = session::start(start, now, policy);
            let session = record_session(uow, None, session_id, vec![event], meta, now).await?;
            Ok(Reply::SessionStarted(
                session.expect("a started session exists"),
            ))
        }

        Command::RecordLoginFailure {
            username,
            reason,
            context,
        } => {
            let user = uow.user_by_name(&username).await?;
            let user_id = user.as_ref().map(|u| u.user_id);
            let event = user::login_failed(&username, user.as_ref(), reason, &context);
            match user {
                Some(u) => {
                    let id = u.user_id;
                    record_user(uow, Some(u), id, vec![event], meta, now).await?;
                }
                None => {
                    let stream_id = login_attempt_stream(Uuid::new_v4());
                    append_all(uow, &stream_id, 0, vec![event], meta, now).await?;
                }
            }
            let facts = Facts {
                trigger: Trigger::LoginFailed,
                now,
                user_id,
                username: Some(&username),
                session_id: None,
                context: &context,
                session_login: None,
                session_last: None,
            };
            if let Some(j) = judge(uow, rules, &facts).await? {
                carry_out(uow, j, user_id, None, meta, now).await?;
            }
            Ok(Reply::Recorded)
        }

        Command::Refresh {
            presented,
            new_token,
            context,
        } => {
            let Some(token) = uow.token(&presented).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownToken));
            };
            let session = load_session(uow, token.session_id).await?;
            let presented = PresentedToken {
                hash: presented.hash,
                generation: token.generation,
            };
            let decision = session.decide_refresh(presented, new_token, &context, now, policy);
            let trigger = match decision.outcome {
                Ok(RefreshGrant::Rotated { .. }) => Some(Trigger::SessionRefreshed),
                Err(Refusal::Reuse(_)) => Some(Trigger::ReuseDetected),
                _ => None,
            };
            let mut judgement = match trigger {
                Some(t) => judge(uow, rules, &session_facts(t, &session, &context, now)).await?,
                None => None,
            };
            if trigger == Some(Trigger::SessionRefreshed)
                && let Some(j) = judgement.take()
            {
                // A refusing judgement replaces the rotation: the client keeps its token.
                let user_id = Some(session.user_id);
                if let Some(refusal) =
                    carry_out(uow, j, user_id, Some(session.clone()), meta, now).await?
                {
                    return Ok(Reply::Rejected(Rejection::Session(refusal)));
                }
            }
            let user_id = session.user_id;
            let after = record_session(
                uow,
                Some(session),
                token.session_id,
                decision.events,
                meta,
                now,
            )
            .await?;
            if let Some(j) = judgement {
                carry_out(uow, j, Some(user_id), None, meta, now).await?;
            }
            Ok(match decision.outcome {
                Ok(grant) => Reply::Refreshed {
                    session: after.expect("refreshed session exists"),
                    grant,
                },
                Err(refusal) => Reply::Rejected(Rejection::Session(refusal)),
            })
        }

        Command::EndSession {
            session_id,
            owner,
            reason,
            context,
        } => {
            let Some(session) = uow.session(session_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownSession));
            };
            if owner.is_some_and(|o| o != session.user_id) {
                return Ok(Reply::Rejected(Rejection::UnknownSession));
            }
            let events = session.decide_revoke(reason, context.as_ref());
            record_ending(uow, session, events, meta, now).await
        }

        Command::EndSessionByToken { presented, context } => {
            let Some(token) = uow.token(&presented).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownToken));
            };
            let session = load_session(uow, token.session_id).await?;
            let events = session.decide_revoke(RevokeReason::Logout, Some(&context));
            record_ending(uow, session, events, meta, now).await
        }

        Command::LogoutEverywhere {
            user_id,
            except,
            context,
        } => {
            let Some(user) = uow.user_by_id(user_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownUser));
            };
            let ended = end_sessions(
                uow,
                user_id,
                except,
                RevokeReason::LogoutEverywhere,
                context.as_ref(),
                meta,
                now,
            )
            .await?;
            let event = user.decide_logout_everywhere(ended.clone(), context.as_ref());
            record_user(uow, Some(user), user_id, vec![event], meta, now).await?;
            Ok(Reply::SessionsEnded(ended))
        }

        Command::SetLock {
            user_id,
            lock,
            reason,
            context,
        } => {
            let Some(user) = uow.user_by_id(user_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownUser));
            };
            let ended = if lock {
                end_sessions(
                    uow,
                    user_id,
                    None,
                    RevokeReason::Admin,
                    context.as_ref(),
                    meta,
                    now,
                )
                .await?
            } else {
                Vec::new()
            };
            let events = user.decide_lock(lock, &reason, context.as_ref());
            record_user(uow, Some(user), user_id, events, meta, now).await?;
            Ok(Reply::SessionsEnded(ended))
        }

        Command::ChangePassword {
            user_id,
            password_hash,
            keep_session,
            context,
        } => {
            let Some(user) = uow.user_by_id(user_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownUser));
            };
            let event = user.decide_change_password(password_hash, keep_session, &context);
            record_user(uow, Some(user), user_id, vec![event], meta, now).await?;
            let ended = end_sessions(
                uow,
                user_id,
                keep_session,
                RevokeReason::PasswordChange,
                Some(&context),
                meta,
                now,
            )
            .await?;
            Ok(Reply::PasswordChanged { ended })
        }

        Command::RequireReauth { session_id, reason } => {
            let Some(session) = uow.session(session_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownSession));
            };
            let events = session.decide_require_reauth(&reason);
            record_session(uow, Some(session), session_id, events, meta, now).await?;
            Ok(Reply::Recorded)
        }

        Command::Reauthenticate { presented, context } => {
            let Some(token) = uow.token(&presented).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownToken));
            };
            let session = load_session(uow, token.session_id).await?;
            let decision = session.decide_reauthenticate(token.generation, &context, now);
            if decision.outcome.is_ok() {
                // The password was proven from here: this context is trusted from now on.
                rules.remember(&session_facts(
                    Trigger::SessionRefreshed,
                    &session,
                    &context,
                    now,
                ));
            }
            let id = session.session_id;
            record_session(uow, Some(session), id, decision.events, meta, now).await?;
            Ok(match decision.outcome {
                Ok(()) => Reply::Recorded,
                Err(refusal) => Reply::Rejected(Rejection::Session(refusal)),
            })
        }

        Command::ExpireIfDue { session_id } => {
            let Some(session) = uow.session(session_id).await? else {
                return Ok(Reply::Rejected(Rejection::UnknownSession));
            };
            let events = session
                .expire::<()>(now)
                .map(|d| d.events)
                .unwrap_or_default();
            record_ending(uow, session, events, meta, now).await
        }

        Command::PruneEndedSessions { ended_before } => {
            let counts = uow.prune_ended_before(ended_before).await?;
            if counts != PruneCounts::default() {
                let event = Event::RetentionPruned(RetentionPruned {
                    ended_before,
                    sessions: counts.sessions,
                    refresh_tokens: counts.refresh_tokens,
                });
                let version = uow.stream_version(RETENTION_STREAM).await?;
                append_all(uow, RETENTION_STREAM, version, vec![event], meta, now).await?;
            }
            Ok(Reply::Pruned(counts))
        }

        Command::Record { stream_id, events } => {
            let version = uow.stream_version(&stream_id).await?;
            append_all(uow, &stream_id, version, events, meta, now).await?;
            Ok(Reply::Recorded)
        }
    }
}
