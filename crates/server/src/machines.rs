//! The application: compiled definitions, a read cache of machine records, and the
//! operations the HTTP handlers call. Every change goes through the store's
//! [`MachineOp`]s, decided by the engine inside the store's write transaction; the cache is
//! only updated from committed records, so it can always be rebuilt from the store.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use levee_engine::machine::{self as engine, Answer, Change, MachineRecord, Peers, Refusal};
use levee_model::{Definition, Diagnostic, LoadContext, MachineDef};
use levee_store::{
    AuditEntry, DefinitionRecord, DynStore, MachineFilter, MachineOp, NewDefinition, OpOutcome,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Auth, Caller, Role};
use crate::clock::Clock;
use crate::error::ApiError;

/// The definition kind of state machines, as stored.
pub const KIND_STATE_MACHINE: &str = "StateMachine";
/// Machines read per page when the cache is filled at start-up.
pub const CACHE_LOAD_PAGE_SIZE: u32 = 10_000;
/// Most machines one create request may name.
pub const MAX_MACHINES_PER_CREATE: usize = 1_000;
/// Most files one apply request may carry.
pub const MAX_FILES_PER_APPLY: usize = 100;
/// Shards of the machine cache: enough that 64 concurrent readers rarely meet on one lock.
const CACHE_SHARDS: usize = 64;

#[derive(Clone, Default)]
pub struct AppOptions {
    /// The machine `/state` answers for (`levee serve --machine`).
    pub compat_machine: Option<String>,
    /// Where run notifications (stalls, failures, approvals needed, stuck tasks) are sent.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Where `metric` checks get their numbers (`levee serve --prometheus URL`); without one,
    /// every metric check fails closed.
    pub metric_source: Option<Arc<dyn levee_stages::MetricSource>>,
    /// Traffic backends `traffic_shift` tasks may name (`backend: sim`) besides HAProxy.
    pub traffic_backends: Vec<Arc<dyn levee_stages::TrafficBackend>>,
    /// How long a run lease lasts unless renewed; `None` is [`crate::replica::LEASE_TTL_MS`].
    pub lease_ttl_ms: Option<u64>,
    /// How often server-wide settings are re-read; `None` is
    /// [`crate::replica::GLOBAL_STATE_POLL_MS`].
    pub global_state_poll_ms: Option<u64>,
    /// Only poll: ignore the store's notices (`levee serve --poll-only`), to measure what
    /// they save or to work around a connection pooler that drops `LISTEN`.
    pub poll_only: bool,
    /// How long running task attempts get to finish on shutdown; `None` is
    /// [`crate::serve::SHUTDOWN_STEPS_GRACE_MS`].
    pub shutdown_steps_grace_ms: Option<u64>,
    /// Where other replicas reach this one (`http://host:port`), to forward controls of runs
    /// it executes. Empty: nobody can forward to it (a lone replica).
    pub address: String,
    /// Scopes past these need a second person's approval; `None` is
    /// [`crate::maint::default_approval_limit`].
    pub maintenance_approval: Option<levee_fleet::BlastRadiusLimit>,
    /// Hosts maintenance automation may take out per pool and overall within a window;
    /// `None` is [`crate::maint::RemovalLimits::default`].
    pub removal_limits: Option<crate::maint::RemovalLimits>,
}

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppOptions")
            .field("compat_machine", &self.compat_machine)
            .field("webhooks", &self.webhooks)
            .field("metric_source", &self.metric_source.is_some())
            .field("traffic_backends", &self.traffic_backends.len())
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("address", &self.address)
            .finish()
    }
}

/// Shared state of one server process. Everything here is derived from the store.
pub struct App {
    pub store: DynStore,
    pub clock: Arc<dyn Clock>,
    pub auth: Auth,
    defs: RwLock<Arc<HashMap<String, Arc<MachineDef>>>>,
    cache: MachineCache,
    compat_machine: RwLock<Option<String>>,
    ready: AtomicBool,
    pub metrics: crate::metrics::Metrics,
    /// The stages runbooks are linted against and planned with.
    pub stages: levee_stages::Registry,
    /// Held while definitions are linted and stored, so two applies in this process never
    /// link against the same old set of runbooks and templates.
    apply_lock: tokio::sync::Mutex<()>,
    /// Runbook runs: their actors, the global pause, event-stream notices, webhooks.
    pub runs: crate::runs::Runs,
    /// This process as a replica: its id and the run leases it holds.
    pub replica: crate::replica::Replica,
    /// Maintenance scopes past these need a second person's approval.
    pub maint_approval: levee_fleet::BlastRadiusLimit,
    /// The removal rate limits every maintenance's disable flow keeps.
    pub removal_limits: crate::maint::RemovalLimits,
    /// Wakes the maintenance driver at once (after a control).
    pub maint_wake: tokio::sync::Notify,
}

impl App {
    /// Loads definitions, machines and tokens from the store.
    pub async fn open(
        store: DynStore,
        clock: Arc<dyn Clock>,
        options: AppOptions,
    ) -> anyhow::Result<Arc<App>> {
        let auth = Auth::load(&store).await?;
        let clock_now = clock.now_ms();
        let global_pause = crate::runs::load_global_pause(&store).await?;
        let notifier = if options.webhooks.urls.is_empty() {
            crate::webhooks::Notifier::disabled()
        } else {
            options.webhooks.validate()?;
            crate::webhooks::Notifier::start(options.webhooks)
        };
        let app = App {
            store,
            clock,
            auth,
            defs: RwLock::new(Arc::new(HashMap::new())),
            cache: MachineCache::new(),
            compat_machine: RwLock::new(options.compat_machine),
            ready: AtomicBool::new(false),
            metrics: crate::metrics::Metrics::install(),
            stages: {
                let mut stages = match options.metric_source {
                    Some(source) => levee_stages::Registry::with_metric_source(source),
                    None => levee_stages::Registry::builtin(),
                };
                for backend in options.traffic_backends {
                    stages.add_traffic_backend(backend);
                }
                stages
            },
            apply_lock: tokio::sync::Mutex::new(()),
            runs: crate::runs::Runs::new(global_pause, notifier),
            replica: crate::replica::Replica::new(
                options.address,
                clock_now,
                options.lease_ttl_ms.unwrap_or(crate::replica::LEASE_TTL_MS),
                options
                    .global_state_poll_ms
                    .unwrap_or(crate::replica::GLOBAL_STATE_POLL_MS),
                options
                    .shutdown_steps_grace_ms
                    .unwrap_or(crate::serve::SHUTDOWN_STEPS_GRACE_MS),
                options.poll_only,
            ),
            maint_approval: options
                .maintenance_approval
                .unwrap_or_else(crate::maint::default_approval_limit),
            removal_limits: options.removal_limits.clone().unwrap_or_default(),
            maint_wake: tokio::sync::Notify::new(),
        };
        app.reload().await?;
        let app = Arc::new(app);
        let replica = &app.replica;
        app.store
            .heartbeat(
                &replica.id,
                &replica.address,
                replica.started_at_ms,
                clock_now,
            )
            .await?;
        tracing::info!(replica = %replica.id, lease_ttl_ms = replica.lease_ttl_ms, "replica started");
        app.recover_runs().await?;
        app.ready.store(true, Ordering::SeqCst);
        Ok(app)
    }

    /// Rebuilds the definition map and the machine cache from the store.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.reload_definitions().await?;
        let mut filter = MachineFilter {
            limit: CACHE_LOAD_PAGE_SIZE,
            ..Default::default()
        };
        loop {
            let page = self.store.machines(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after_id = Some(last.id.clone());
            let full = page.len() as u32 == CACHE_LOAD_PAGE_SIZE;
            for record in page {
                self.cache.put(record);
            }
            if !full {
                break;
            }
        }
        self.metrics.set_machines(self.cache.len());
        Ok(())
    }

    /// Rebuilds the definition map from the store (another replica stored definitions).
    pub async fn reload_definitions(&self) -> anyhow::Result<()> {
        let mut defs = HashMap::new();
        for record in self.store.definitions(Some(KIND_STATE_MACHINE)).await? {
            let def: MachineDef = serde_json::from_value(record.compiled.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "stored definition {} v{} does not parse: {e}",
                    record.name,
                    record.version
                )
            })?;
            defs.insert(def.name.clone(), Arc::new(def));
        }
        *self.defs.write().expect("defs lock") = Arc::new(defs);
        Ok(())
    }

    /// Drops cached machines older than the versions another writer committed, so the next
    /// read asks the store. Returns how many were dropped.
    pub fn forget_older_machines(&self, versions: &[(String, i64)]) -> usize {
        versions
            .iter()
            .filter(|(id, version)| self.cache.forget_older(id, *version))
            .count()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn compat_machine(&self) -> Option<String> {
        self.compat_machine.read().expect("compat lock").clone()
    }

    pub fn set_compat_machine(&self, id: Option<String>) {
        *self.compat_machine.write().expect("compat lock") = id;
    }

    pub fn defs(&self) -> Arc<HashMap<String, Arc<MachineDef>>> {
        self.defs.read().expect("defs lock").clone()
    }

    pub fn def(&self, name: &str) -> Option<Arc<MachineDef>> {
        self.defs.read().expect("defs lock").get(name).cloned()
    }

    pub fn cached(&self, id: &str) -> Option<Arc<MachineRecord>> {
        self.cache.get(id)
    }

    pub fn cached_count(&self) -> usize {
        self.cache.len()
    }

    /// A machine and its definition, from the cache; the store is asked only on a miss.
    pub async fn machine(
        &self,
        id: &str,
    ) -> Result<(Arc<MachineRecord>, Arc<MachineDef>), ApiError> {
        let record = match self.cache.get(id) {
            Some(record) => record,
            None => {
                let record = self
                    .store
                    .machine(id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no machine with id `{id}`")))?;
                self.cache.put(record);
                self.cache.get(id).expect("just inserted")
            }
        };
        // A definition another replica stored may not have reached this one's map yet (its
        // notice is on the way, or notices are off): read the definitions once more.
        if self.def(&record.definition).is_none()
            && let Err(error) = self.reload_definitions().await
        {
            tracing::warn!(%error, "cannot re-read definitions");
        }
        let def = self.def(&record.definition).ok_or_else(|| {
            ApiError::internal(format!(
                "machine {id} follows unknown definition {}",
                record.definition
            ))
        })?;
        Ok((record, def))
    }

    /// "Is machine `id` in `state`, and may it take that step now?"
    pub async fn check(&self, caller: &Caller, id: &str, state: &str) -> Result<Checked, ApiError> {
        caller.require(Role::Viewer)?;
        let (record, def) = self.machine(id).await?;
        caller.require_machine(&record)?;
        let now = self.now_ms();
        let defs = self.defs();
        let peers = CachePeers {
            app: self,
            defs: &defs,
            now_ms: now,
        };
        let answer = engine::answer(&def, &record, &peers, state, now)
            .map_err(|refusal| ApiError::from_refusal(&refusal))?;
        Ok(Checked {
            answer,
            version: record.version,
        })
    }

    /// Reports that the step of `report.state` is done, and answers once that is durable.
    pub async fn report(
        &self,
        caller: &Caller,
        id: &str,
        report: OwnedReport,
        action: &str,
    ) -> Result<OpOutcome, ApiError> {
        let audit = self.audit_entry(
            caller,
            action,
            id,
            json!({ "state": report.state, "event": report.event, "reporter": report.reporter }),
        );
        let checked = match caller.require(Role::Operator) {
            Ok(()) => match self.machine(id).await {
                Ok((record, def)) => caller.require_machine(&record).map(|()| def),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let def = match checked {
            Ok(def) => def,
            Err(error) => {
                // Refused before reaching the store: still audited, attempts matter most.
                let entry = AuditEntry {
                    outcome: error.code.to_string(),
                    ..audit
                };
                if let Err(audit_error) = self.store.audit(entry).await {
                    tracing::warn!(%audit_error, "could not audit a refused report");
                }
                return Err(error);
            }
        };
        let defs = self.defs();
        let actor = caller.name.clone();
        let decide_defs = defs.clone();
        let op = MachineOp {
            machine: id.to_string(),
            peers: def.guarded_machines(),
            with_history: false,
            audit: Some(audit),
            decide: Box::new(move |ctx| {
                let now = report.now_ms;
                let peers = RecordPeers {
                    records: ctx.peers,
                    defs: &decide_defs,
                    now_ms: now,
                };
                let def = decide_defs
                    .get(&ctx.record.definition)
                    .cloned()
                    .unwrap_or_else(|| def.clone());
                engine::report(
                    &def,
                    ctx.record,
                    &peers,
                    &engine::Report {
                        state: &report.state,
                        event: &report.event,
                        reporter: report.reporter.as_deref(),
                        actor: &actor,
                        expect_version: report.expect_version,
                    },
                    now,
                )
            }),
        };
        let outcome = self.run_one(op).await?;
        if let OpOutcome::Applied(change) = &outcome {
            self.metrics.transitions(change.history.len());
        }
        Ok(outcome)
    }

    /// Sends a machine back to its initial state to replay its recorded path.
    pub async fn replay(&self, caller: &Caller, id: &str) -> Result<OpOutcome, ApiError> {
        caller.require(Role::Operator)?;
        let (record, _) = self.machine(id).await?;
        caller.require_machine(&record)?;
        let defs = self.defs();
        let actor = caller.name.clone();
        let now = self.now_ms();
        let op = MachineOp {
            machine: id.to_string(),
            peers: Vec::new(),
            with_history: true,
            audit: Some(self.audit_entry(caller, "machine.replay", id, json!({}))),
            decide: Box::new(move |ctx| {
                let def = defs.get(&ctx.record.definition).cloned().ok_or_else(|| {
                    Refusal::UnknownState {
                        state: ctx.record.state.clone(),
                    }
                })?;
                engine::start_replay(&def, ctx.record, ctx.history.unwrap_or(&[]), now, &actor)
            }),
        };
        self.run_one(op).await
    }

    /// Commits every timer due now. Returns how many machines moved.
    pub async fn fire_due_timers(&self, limit: u32) -> Result<usize, ApiError> {
        let now = self.now_ms();
        let due = self.store.due_timers(now, limit).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let defs = self.defs();
        let ops = due
            .into_iter()
            .map(|id| {
                let defs = defs.clone();
                MachineOp {
                    machine: id,
                    peers: Vec::new(),
                    with_history: false,
                    audit: None,
                    decide: Box::new(move |ctx| {
                        let unchanged = Change {
                            record: ctx.record.clone(),
                            history: Vec::new(),
                        };
                        Ok(defs
                            .get(&ctx.record.definition)
                            .and_then(|def| engine::catch_up(def, ctx.record, now))
                            .unwrap_or(unchanged))
                    }),
                }
            })
            .collect();
        let outcomes = self.store.run(ops).await?;
        let mut moved = 0;
        for outcome in outcomes {
            if let OpOutcome::Applied(change) = outcome {
                moved += 1;
                self.metrics.transitions(change.history.len());
                self.cache.put(change.record);
            }
        }
        Ok(moved)
    }

    async fn run_one(&self, op: MachineOp) -> Result<OpOutcome, ApiError> {
        let outcome = self
            .store
            .run(vec![op])
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal("store returned no outcome"))?;
        match &outcome {
            OpOutcome::Applied(change) => self.cache.put(change.record.clone()),
            OpOutcome::Unchanged(record) | OpOutcome::Refused(_, record) => {
                self.cache.put(record.clone())
            }
            OpOutcome::NotFound => {}
        }
        Ok(outcome)
    }

    /// Creates machines from stored definitions. Ids that exist already are reported, not
    /// changed.
    pub async fn create_machines(
        &self,
        caller: &Caller,
        requests: Vec<NewMachine>,
    ) -> Result<Vec<MachineRecord>, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        if requests.is_empty() {
            return Err(ApiError::bad_request(
                "`machines` is empty: name at least one machine",
            ));
        }
        if requests.len() > MAX_MACHINES_PER_CREATE {
            return Err(ApiError::bad_request(format!(
                "{} machines in one request; send at most {MAX_MACHINES_PER_CREATE} at a time",
                requests.len()
            )));
        }
        let now = self.now_ms();
        let mut changes = Vec::with_capacity(requests.len());
        let mut seen = std::collections::HashSet::new();
        for request in &requests {
            validate_id("machine id", &request.id)?;
            if let Some(group) = &request.group {
                validate_id("group", group)?;
            }
            if !seen.insert(request.id.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "machine `{}` is named twice",
                    request.id
                )));
            }
            let def = self.def(&request.definition).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_definition",
                    format!(
                        "no StateMachine definition named `{}`; apply it first (`levee apply FILE`)",
                        request.definition
                    ),
                )
            })?;
            changes.push(engine::new_instance(
                &def,
                &request.id,
                request.group.as_deref(),
                now,
                &caller.name,
            ));
        }
        // One entry per machine, so `levee audit --target ID` finds a machine's creation.
        let audits = requests
            .iter()
            .map(|r| {
                let detail = json!({ "definition": r.definition, "group": r.group });
                self.audit_entry(caller, "machine.create", &r.id, detail)
            })
            .collect();
        let applied = self.store.apply(Vec::new(), changes, audits).await?;
        for record in &applied.created {
            self.cache.put(record.clone());
        }
        self.metrics.set_machines(self.cache.len());
        Ok(applied.created)
    }

    /// Loads, validates and stores definition files, creating their declared instances.
    pub async fn apply_files(
        &self,
        caller: &Caller,
        files: Vec<(String, String)>,
    ) -> Result<ApplyReport, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        if files.is_empty() {
            return Err(ApiError::bad_request(
                "`files` is empty: send at least one definition file",
            ));
        }
        if files.len() > MAX_FILES_PER_APPLY {
            return Err(ApiError::bad_request(format!(
                "{} files in one request; send at most {MAX_FILES_PER_APPLY}",
                files.len()
            )));
        }
        let ctx = self.load_context(false);
        let mut diagnostics: Vec<Diagnostic> = Vec::new();
        let mut machine_defs = Vec::new();
        let mut runbook_defs = Vec::new();
        let mut fleet_defs = Vec::new();
        for (name, content) in &files {
            match levee_model::load_documents(name, content, &ctx) {
                Ok(defs) => {
                    for def in defs {
                        match def {
                            Definition::StateMachine(machine) => {
                                machine_defs.push((machine, content.clone()))
                            }
                            fleet @ (Definition::Fleet(_)
                            | Definition::MaintenancePolicy(_)
                            | Definition::RemediationRule(_)
                            | Definition::DrainTest(_)) => {
                                fleet_defs.push((fleet, content.clone()))
                            }
                            other => runbook_defs.push((other, content.clone())),
                        }
                    }
                }
                Err(errors) => diagnostics.extend(errors),
            }
        }
        if !diagnostics.is_empty() {
            return Err(invalid_definitions(diagnostics));
        }
        let _applying = self.apply_lock.lock().await;
        let mut runbook_defs = self.prepare_runbook_defs(caller, runbook_defs).await?;
        let runbooks_applied: std::collections::BTreeSet<String> = runbook_defs
            .iter()
            .filter(|d| d.kind == crate::runbooks::KIND_RUNBOOK)
            .map(|d| d.name.clone())
            .collect();
        let fleet_defs = self
            .prepare_fleet_defs(caller, fleet_defs, &runbooks_applied)
            .await?;
        runbook_defs.extend(fleet_defs);
        self.store_defs(caller, machine_defs, runbook_defs, "definition.apply")
            .await
    }

    /// Stores compiled machine definitions (refusing changes that would strand instances in
    /// states the new version drops) and creates their missing instances.
    pub async fn store_machine_defs(
        &self,
        caller: &Caller,
        defs: Vec<(MachineDef, String)>,
        action: &str,
    ) -> Result<ApplyReport, ApiError> {
        self.store_defs(caller, defs, Vec::new(), action).await
    }

    /// Stores machine definitions and other definitions (runbooks and templates, already
    /// linked) in one transaction, with one audit entry naming them all.
    async fn store_defs(
        &self,
        caller: &Caller,
        defs: Vec<(MachineDef, String)>,
        others: Vec<NewDefinition>,
        action: &str,
    ) -> Result<ApplyReport, ApiError> {
        let now = self.now_ms();
        let mut new_defs = Vec::new();
        let mut changes = Vec::new();
        for (def, source) in &defs {
            self.check_instances_fit(def).await?;
            let compiled = serde_json::to_value(def).map_err(ApiError::internal)?;
            new_defs.push(NewDefinition {
                kind: KIND_STATE_MACHINE.to_string(),
                name: def.name.clone(),
                digest: hex::encode(Sha256::digest(compiled.to_string().as_bytes())),
                compiled,
                source: source.clone(),
                created_at_ms: now,
                created_by: caller.name.clone(),
            });
            for id in &def.instances {
                if self.cache.get(id).is_none() {
                    changes.push(engine::new_instance(def, id, None, now, &caller.name));
                }
            }
        }
        let mut names: Vec<&str> = defs.iter().map(|(d, _)| d.name.as_str()).collect();
        names.extend(others.iter().map(|d| d.name.as_str()));
        let audit = self.audit_entry(
            caller,
            action,
            &names.join(","),
            json!({ "definitions": names }),
        );
        new_defs.extend(others);
        let applied = self.store.apply(new_defs, changes, vec![audit]).await?;
        {
            let mut map = (*self.defs()).clone();
            for (def, _) in defs {
                map.insert(def.name.clone(), Arc::new(def));
            }
            *self.defs.write().expect("defs lock") = Arc::new(map);
        }
        for record in &applied.created {
            self.cache.put(record.clone());
        }
        self.metrics.set_machines(self.cache.len());
        Ok(ApplyReport {
            definitions: applied.definitions,
            created: applied.created.into_iter().map(|r| r.id).collect(),
        })
    }

    /// A new version of a definition must still contain every state its instances are in.
    async fn check_instances_fit(&self, def: &MachineDef) -> Result<(), ApiError> {
        let mut stranded = Vec::new();
        let mut filter = MachineFilter {
            definition: Some(def.name.clone()),
            limit: CACHE_LOAD_PAGE_SIZE,
            ..Default::default()
        };
        loop {
            let page = self.store.machines(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after_id = Some(last.id.clone());
            for record in &page {
                if def.state(&record.state).is_none() {
                    stranded.push(json!({ "machine": record.id, "state": record.state }));
                }
            }
            if page.len() < CACHE_LOAD_PAGE_SIZE as usize {
                break;
            }
        }
        if stranded.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "states_in_use",
            format!(
                "the new version of `{}` drops states that {} machine(s) are in; move them first \
                 or keep those states",
                def.name,
                stranded.len()
            ),
        )
        .with_details(json!({ "machines": stranded })))
    }

    pub fn load_context(&self, allow_past_timers: bool) -> LoadContext {
        LoadContext {
            now_ms: self.now_ms(),
            local_tz: jiff::tz::TimeZone::system(),
            allow_past_timers,
        }
    }

    pub fn audit_entry(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        mut detail: serde_json::Value,
    ) -> AuditEntry {
        if let (Some(map), Some(remote)) = (detail.as_object_mut(), caller.remote) {
            map.insert("remote".to_string(), json!(remote.to_string()));
        }
        AuditEntry {
            at_ms: self.now_ms(),
            actor: caller.name.clone(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: String::new(),
            detail,
        }
    }

    /// Writes an audit entry for an action that does not go through a machine op.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), ApiError> {
        self.store.audit(entry).await.map_err(ApiError::from)
    }
}

/// The answer to a check, with the version it was read at (the `ETag`).
pub struct Checked {
    pub answer: Answer,
    pub version: i64,
}

/// A report whose strings are owned, so it can move into the store's writer.
#[derive(Clone, Debug)]
pub struct OwnedReport {
    pub state: String,
    pub event: String,
    pub reporter: Option<String>,
    pub expect_version: Option<i64>,
    pub now_ms: i64,
}

#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    /// Machine id: letters, digits, `.`, `_` and `-`, at most 128 characters.
    pub id: String,
    /// Name of an applied `StateMachine` definition.
    pub definition: String,
    /// Optional group, for tokens scoped to `group:NAME`.
    #[serde(default)]
    pub group: Option<String>,
}

pub struct ApplyReport {
    pub definitions: Vec<(DefinitionRecord, bool)>,
    pub created: Vec<String>,
}

pub fn invalid_definitions(diagnostics: Vec<Diagnostic>) -> ApiError {
    let count = diagnostics.iter().filter(|d| d.is_error()).count();
    let first = diagnostics
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_definition",
        format!("{count} error(s) in the definitions; the first: {first}"),
    )
    .with_details(json!({ "diagnostics": diagnostics }))
}

/// Ids, groups and reporter names: 1 to 128 of `[A-Za-z0-9._-]`, starting with a letter or
/// digit, so they are safe in URLs, shell scripts and logs.
pub fn validate_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {what} `{id}`: use 1 to 128 letters, digits, `.`, `_` or `-`, starting with a \
             letter or digit"
        )))
    }
}

/// Peers read from the cache (for answers).
struct CachePeers<'a> {
    app: &'a App,
    defs: &'a HashMap<String, Arc<MachineDef>>,
    now_ms: i64,
}

impl Peers for CachePeers<'_> {
    fn state_of(&self, machine: &str) -> Option<String> {
        let record = self.app.cache.get(machine)?;
        let def = self.defs.get(&record.definition)?;
        Some(engine::effective_state(def, &record, self.now_ms).to_string())
    }
}

/// Peers read inside the store's write transaction (for decisions).
struct RecordPeers<'a> {
    records: &'a HashMap<String, MachineRecord>,
    defs: &'a HashMap<String, Arc<MachineDef>>,
    now_ms: i64,
}

impl Peers for RecordPeers<'_> {
    fn state_of(&self, machine: &str) -> Option<String> {
        let record = self.records.get(machine)?;
        let def = self.defs.get(&record.definition)?;
        Some(engine::effective_state(def, record, self.now_ms).to_string())
    }
}

/// Committed machine records by id, sharded so readers rarely contend. Updates keep the
/// highest version, so a late writer can never roll a record back.
struct MachineCache {
    shards: Vec<RwLock<HashMap<String, Arc<MachineRecord>>>>,
}

impl MachineCache {
    fn new() -> Self {
        MachineCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, id: &str) -> &RwLock<HashMap<String, Arc<MachineRecord>>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % CACHE_SHARDS]
    }

    fn get(&self, id: &str) -> Option<Arc<MachineRecord>> {
        self.shard(id).read().expect("cache lock").get(id).cloned()
    }

    fn put(&self, record: MachineRecord) {
        let mut shard = self.shard(&record.id).write().expect("cache lock");
        match shard.get(&record.id) {
            Some(existing) if existing.version >= record.version => {}
            _ => {
                shard.insert(record.id.clone(), Arc::new(record));
            }
        }
    }

    /// Removes `id` if the cached record is older than `version`.
    fn forget_older(&self, id: &str, version: i64) -> bool {
        let mut shard = self.shard(id).write().expect("cache lock");
        if shard.get(id).is_some_and(|cached| cached.version < version) {
            shard.remove(id);
            true
        } else {
            false
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("cache lock").len())
            .sum()
    }
}

impl App {
    /// Serves a definition file at `/state` (`levee serve --machine FILE`): StateService's
    /// format or a native `StateMachine` with one instance. The file is only read: the
    /// machine's state lives in the store, so a restart continues where it was, and the
    /// file's `current_state` is only where a new machine starts.
    pub async fn serve_machine_file(&self, file: &str, content: &str) -> anyhow::Result<String> {
        let name = machine_name_from_file(file);
        let mut def = if levee_model::stateservice::looks_like_stateservice(content) {
            // A timer that already fired for an existing machine is history, not an error.
            let exists = self.store.machine(&name).await?.is_some();
            let ctx = self.load_context(exists);
            levee_model::stateservice::load(file, &name, content, &ctx)
                .map_err(|d| anyhow::anyhow!(render_diagnostics(&d)))?
        } else {
            let ctx = self.load_context(true);
            let defs = levee_model::load_documents(file, content, &ctx)
                .map_err(|d| anyhow::anyhow!(render_diagnostics(&d)))?;
            let mut machines = defs.into_iter().filter_map(Definition::into_state_machine);
            match (machines.next(), machines.next()) {
                (Some(def), None) => def,
                _ => anyhow::bail!("{file}: --machine needs exactly one StateMachine document"),
            }
        };
        if def.instances.is_empty() {
            def.instances.push(def.name.clone());
        }
        if def.instances.len() != 1 {
            anyhow::bail!(
                "{file}: --machine serves one machine at /state, but `{}` declares {} instances; \
                 use /machines/{{id}}/state for several",
                def.name,
                def.instances.len()
            );
        }
        let id = def.instances[0].clone();
        let system = Caller {
            name: "levee-serve".to_string(),
            role: Role::Admin,
            scope: crate::auth::Scope::All,
            remote: None,
        };
        self.store_machine_defs(
            &system,
            vec![(def, content.to_string())],
            "definition.serve",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{file}: {}", e.message))?;
        self.set_compat_machine(Some(id.clone()));
        Ok(id)
    }
}

/// `deploy/States.yaml` → `states`: a valid definition name from a file name.
pub fn machine_name_from_file(file: &str) -> String {
    let stem = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("states");
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    name = name
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        "states".to_string()
    } else {
        name
    }
}

pub fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
