//! Members, their admin tokens, and subsystems.

use enlace_core::id::{MemberId, SubsystemId};
use enlace_core::problem::{Problem, ProblemKind};
use serde_json::Value;

use crate::model::{Approval, MemberRecord, SubsystemRecord, TokenRecord, kind};

use super::{
    Actor, Registry, check_text, new_token, not_found, now, rfc3339, to_value, token_hash,
};

impl Registry {
    pub async fn create_member(
        &self,
        actor: &Actor,
        id: MemberId,
        name: String,
    ) -> Result<MemberRecord, Problem> {
        Self::require_federation_admin(actor)?;
        self.require_instance(&id)?;
        check_text("name", &name, 200)?;
        let _w = self.write.lock().await;
        if self.store.get(kind::MEMBER, &id.to_string())?.is_some() {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("member {id} is already registered"),
            ));
        }
        let rec = MemberRecord {
            id,
            name,
            created_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "member.create",
            vec![(kind::MEMBER, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Issues a new admin token for a member; returns the token (shown once).
    pub async fn issue_member_token(
        &self,
        actor: &Actor,
        member: &MemberId,
        label: String,
    ) -> Result<String, Problem> {
        Self::require_federation_admin(actor)?;
        check_text("label", &label, 100)?;
        let _w = self.write.lock().await;
        self.member(member)?;
        let token = new_token();
        let rec = TokenRecord {
            hash: token_hash(&token),
            member: member.clone(),
            label,
            created_at: rfc3339(now()),
            revoked_at: None,
        };
        self.commit(
            actor,
            "member.token.issue",
            vec![(kind::TOKEN, rec.hash.clone(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(token)
    }

    /// A member's admin tokens (label, times; never the hash), for the federation admin or
    /// that member's admin.
    pub fn member_tokens(&self, actor: &Actor, member: &MemberId) -> Result<Vec<Value>, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, member)?;
        }
        let tokens: Vec<TokenRecord> = self.list(kind::TOKEN)?;
        Ok(tokens
            .into_iter()
            .filter(|t| &t.member == member)
            .map(|t| {
                serde_json::json!({"label": t.label, "created_at": t.created_at, "revoked_at": t.revoked_at})
            })
            .collect())
    }

    /// Revokes every unrevoked admin token of `member` labelled `label`: by the federation
    /// admin, or by that member's admin (a token thought leaked). Returns how many.
    pub async fn revoke_member_tokens(
        &self,
        actor: &Actor,
        member: &MemberId,
        label: &str,
    ) -> Result<usize, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, member)?;
        }
        let _w = self.write.lock().await;
        let at = rfc3339(now());
        let tokens: Vec<TokenRecord> = self.list(kind::TOKEN)?;
        let mut puts = Vec::new();
        for mut t in tokens
            .into_iter()
            .filter(|t| &t.member == member && t.label == label && t.revoked_at.is_none())
        {
            t.revoked_at = Some(at.clone());
            puts.push((kind::TOKEN, t.hash.clone(), to_value(&t)?));
        }
        if puts.is_empty() {
            return Err(not_found("token labelled", label));
        }
        let n = puts.len();
        self.commit(actor, "member.token.revoke", puts, vec![])
            .await?;
        Ok(n)
    }

    pub fn member(&self, id: &MemberId) -> Result<MemberRecord, Problem> {
        self.get(kind::MEMBER, &id.to_string())?
            .ok_or_else(|| not_found("member", &id.to_string()))
    }

    // ---- subsystems ----

    pub async fn register_subsystem(
        &self,
        actor: &Actor,
        id: SubsystemId,
    ) -> Result<SubsystemRecord, Problem> {
        Self::require_member(actor, &id.member)?;
        let _w = self.write.lock().await;
        self.member(&id.member)?;
        if self.store.get(kind::SUBSYSTEM, &id.to_string())?.is_some() {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("subsystem {id} is already registered"),
            ));
        }
        let rec = SubsystemRecord {
            id,
            state: Approval::Pending,
            created_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "subsystem.register",
            vec![(kind::SUBSYSTEM, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    pub async fn approve_subsystem(
        &self,
        actor: &Actor,
        id: &SubsystemId,
    ) -> Result<SubsystemRecord, Problem> {
        Self::require_federation_admin(actor)?;
        let _w = self.write.lock().await;
        let mut rec = self.subsystem(id)?;
        if rec.state == Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is already approved"),
            ));
        }
        rec.state = Approval::Approved;
        self.commit(
            actor,
            "subsystem.approve",
            vec![(kind::SUBSYSTEM, id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Withdraws an approved subsystem: it leaves the signed configuration, and nodes refuse
    /// its calls within seconds. By the federation admin or the admin of its member.
    pub async fn revoke_subsystem(
        &self,
        actor: &Actor,
        id: &SubsystemId,
        reason: String,
    ) -> Result<SubsystemRecord, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, &id.member)?;
        }
        check_text("reason", &reason, 1000)?;
        let _w = self.write.lock().await;
        let mut rec = self.subsystem(id)?;
        if rec.state != Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is not approved, so it cannot be revoked"),
            ));
        }
        rec.state = Approval::Revoked;
        self.commit(
            actor,
            "subsystem.revoke",
            vec![(kind::SUBSYSTEM, id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        tracing::info!(subsystem = %id, %reason, "subsystem revoked");
        Ok(rec)
    }

    pub fn subsystem(&self, id: &SubsystemId) -> Result<SubsystemRecord, Problem> {
        self.get(kind::SUBSYSTEM, &id.to_string())?
            .ok_or_else(|| not_found("subsystem", &id.to_string()))
    }

    pub(super) fn approved_subsystem(&self, id: &SubsystemId) -> Result<SubsystemRecord, Problem> {
        let rec = self.subsystem(id)?;
        if rec.state != Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is not yet approved by the federation admin"),
            ));
        }
        Ok(rec)
    }
}
