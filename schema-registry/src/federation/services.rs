//! Services (published descriptions) and concepts (the once-only claims).

use enlace_core::id::{ConceptId, ServiceId, ServiceVersion};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::Description;

use crate::model::{ConceptRecord, ServiceRecord, kind};

use super::{Actor, Registry, internal, not_found, now, rfc3339, to_value};

impl Registry {
    /// Publishes a version of a service from a parsed description, refusing breaking changes
    /// within a major version.
    pub async fn publish_service(
        &self,
        actor: &Actor,
        id: ServiceId,
        version: ServiceVersion,
        description: Description,
    ) -> Result<ServiceRecord, Problem> {
        Self::require_member(actor, id.member())?;
        let _w = self.write.lock().await;
        self.approved_subsystem(&id.subsystem)?;
        let versions = self.service_versions(&id)?;
        if versions.iter().any(|v| v.version == version) {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("{id} {version} is already published; versions are immutable"),
            ));
        }
        if let Some(later) = versions
            .iter()
            .find(|v| v.version.major == version.major && v.version > version)
        {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!(
                    "{id} {} is already published; publish minor versions in order",
                    later.version
                ),
            ));
        }
        let previous = versions
            .iter()
            .filter(|v| v.version < version)
            .max_by_key(|v| v.version);
        if let Some(prev) = previous
            && prev.version.major == version.major
        {
            let old = self.description(prev)?;
            let breaks = enlace_description::compatibility(&old, &description);
            if !breaks.is_empty() {
                return Err(Problem::new(
                    ProblemKind::IncompatibleVersion,
                    format!(
                        "{id} {version} breaks {} in {} place(s); publish it as v{}.0 instead",
                        prev.version,
                        breaks.len(),
                        version.major + 1
                    ),
                )
                .with("breaks", &breaks));
            }
        }
        let rec = ServiceRecord {
            id,
            version,
            kind: description.kind,
            digest: description.digest.clone(),
            published_at: rfc3339(now()),
            operations: description.operations.clone(),
        };
        let key = ServiceRecord::key(&rec.id, rec.version);
        self.commit(
            actor,
            "service.publish",
            vec![(kind::SERVICE, key, to_value(&rec)?)],
            vec![(description.digest.clone(), description.stored)],
        )
        .await?;
        Ok(rec)
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>, Problem> {
        self.list(kind::SERVICE)
    }

    pub fn service_versions(&self, id: &ServiceId) -> Result<Vec<ServiceRecord>, Problem> {
        let mut v: Vec<ServiceRecord> = self
            .services()?
            .into_iter()
            .filter(|s| &s.id == id)
            .collect();
        v.sort_by_key(|s| s.version);
        Ok(v)
    }

    pub fn service(
        &self,
        id: &ServiceId,
        version: ServiceVersion,
    ) -> Result<ServiceRecord, Problem> {
        self.get(kind::SERVICE, &ServiceRecord::key(id, version))?
            .ok_or_else(|| not_found("service version", &format!("{id} {version}")))
    }

    pub fn description(&self, rec: &ServiceRecord) -> Result<Description, Problem> {
        let bytes = self
            .store
            .blob(&rec.digest)?
            .ok_or_else(|| internal(format!("description {} missing", rec.digest)))?;
        Description::load(rec.kind, &bytes)
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Problem> {
        Ok(self.store.blob(digest)?)
    }

    // ---- concepts ----

    pub async fn claim_concept(
        &self,
        actor: &Actor,
        id: ConceptId,
        service: ServiceId,
        operation: String,
        field: String,
        aliases: Vec<String>,
    ) -> Result<ConceptRecord, Problem> {
        Self::require_member(actor, service.member())?;
        if aliases.len() > 32 || aliases.iter().any(|a| a.is_empty() || a.len() > 64) {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                "aliases: at most 32, each 1 to 64 characters",
            ));
        }
        let _w = self.write.lock().await;
        if let Some(current) = self.get::<ConceptRecord>(kind::CONCEPT, id.as_str())? {
            return Err(Problem::new(
                ProblemKind::ConceptClaimed,
                format!(
                    "{id} already has an authoritative source: {} ({} {})",
                    current.service, current.operation, current.field
                ),
            )
            .with("current_source", &current.service)
            .with("operation", &current.operation)
            .with("field", &current.field));
        }
        let latest = self
            .service_versions(&service)?
            .pop()
            .ok_or_else(|| not_found("service", &service.to_string()))?;
        let op = latest
            .operations
            .iter()
            .find(|o| o.id == operation)
            .ok_or_else(|| {
                Problem::new(
                    ProblemKind::UnknownOperation,
                    format!(
                        "operation `{operation}` is not in {service} {}",
                        latest.version
                    ),
                )
            })?;
        if !op.fields.iter().any(|f| f.pointer == field) {
            return Err(Problem::new(
                ProblemKind::UnknownField,
                format!("`{field}` is not returned by {operation}"),
            )
            .with("fields", [&field]));
        }
        let rec = ConceptRecord {
            id,
            service,
            operation,
            field,
            aliases,
            claimed_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "concept.claim",
            vec![(kind::CONCEPT, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    pub fn concepts(&self) -> Result<Vec<ConceptRecord>, Problem> {
        self.list(kind::CONCEPT)
    }
}
