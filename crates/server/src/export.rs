//! History exported as scripts that replay a machine's recorded path: a shell script, an
//! Ansible playbook and a Chef recipe. Each waits until Levee answers yes to the next step,
//! leaves a marked place for the step's own work, then reports the step done.
//!
//! State and event names are restricted to `[A-Za-z0-9_.-]` by validation, so they are safe
//! unquoted in URLs and scripts.

use levee_engine::machine::recorded_path;
use levee_engine::{HistoryEntry, MachineRecord};

use crate::App;
use crate::error::ApiError;

/// Entries read per page when a whole history is exported.
const EXPORT_PAGE_SIZE: u32 = 1_000;
/// Most history entries one export reads; a longer history is cut with a note.
pub const MAX_EXPORT_ENTRIES: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Shell,
    Ansible,
    Chef,
}

impl ExportFormat {
    pub fn parse(text: &str) -> Result<ExportFormat, String> {
        match text {
            "shell" | "sh" => Ok(ExportFormat::Shell),
            "ansible" => Ok(ExportFormat::Ansible),
            "chef" => Ok(ExportFormat::Chef),
            other => Err(format!(
                "unknown format `{other}`: use json, shell, ansible or chef"
            )),
        }
    }
}

pub async fn whole_history(app: &App, id: &str) -> Result<Vec<HistoryEntry>, ApiError> {
    let mut all = Vec::new();
    let mut after = 0;
    while all.len() < MAX_EXPORT_ENTRIES {
        let page = app.store.history(id, after, EXPORT_PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == EXPORT_PAGE_SIZE as usize;
        all.extend(page);
        if !full {
            break;
        }
    }
    Ok(all)
}

pub fn script(
    format: ExportFormat,
    record: &MachineRecord,
    history: &[HistoryEntry],
    server: &str,
) -> String {
    match format {
        ExportFormat::Shell => shell(record, history, server),
        ExportFormat::Ansible => ansible(record, history, server),
        ExportFormat::Chef => chef(record, history, server),
    }
}

fn shell(record: &MachineRecord, history: &[HistoryEntry], server: &str) -> String {
    let mut out = format!(
        "#!/bin/sh\n\
         # The recorded path of machine `{id}` (definition `{def}`), exported by Levee.\n\
         # Each step waits until Levee says yes, runs your step, then reports it done.\n\
         # To rebuild the machine, first send it back to its start: levee state replay {id}\n\
         set -eu\n\
         LEVEE_SERVER=\"${{LEVEE_SERVER:-{server}}}\"\n\
         MACHINE={id}\n\
         levee() {{ # METHOD STATE [EVENT]\n\
         \x20 url=\"$LEVEE_SERVER/machines/$MACHINE/state?state=$2${{3:+&event=$3}}\"\n\
         \x20 if [ -n \"${{LEVEE_TOKEN:-}}\" ]; then\n\
         \x20   curl -fsS -o /dev/null -X \"$1\" -H \"Authorization: Bearer $LEVEE_TOKEN\" \"$url\"\n\
         \x20 else\n\
         \x20   curl -fsS -o /dev/null -X \"$1\" \"$url\"\n\
         \x20 fi\n\
         }}\n\
         wait_for() {{ until levee GET \"$1\" 2>/dev/null; do sleep \"${{LEVEE_POLL_S:-5}}\"; done; }}\n",
        id = record.id,
        def = record.definition,
    );
    for (n, step) in recorded_path(history).iter().enumerate() {
        let n = n + 1;
        if step.by_timer {
            out.push_str(&format!(
                "\n# step {n}: `{}` moves to `{}` by its timer\nwait_for {}\n",
                step.from, step.to, step.to
            ));
            continue;
        }
        let event = step.event.as_deref().unwrap_or(levee_model::DEFAULT_EVENT);
        out.push_str(&format!(
            "\n# step {n}: `{from}` --{event}--> `{to}`\nwait_for {from}\n\
             # (the work of `{from}` goes here)\nlevee PUT {from} {event}\n",
            from = step.from,
            to = step.to,
        ));
    }
    out
}

fn ansible(record: &MachineRecord, history: &[HistoryEntry], server: &str) -> String {
    let mut out = format!(
        "# The recorded path of machine `{id}` (definition `{def}`), exported by Levee.\n\
         # Each step waits until Levee says yes, then reports it done; put your own tasks\n\
         # between the two. Send the machine back to its start first: levee state replay {id}\n\
         - hosts: localhost\n\
         \x20 gather_facts: false\n\
         \x20 vars:\n\
         \x20   levee_server: \"{{{{ lookup('env', 'LEVEE_SERVER') | default('{server}', true) }}}}\"\n\
         \x20   levee_headers:\n\
         \x20     Authorization: \"Bearer {{{{ lookup('env', 'LEVEE_TOKEN') }}}}\"\n\
         \x20   levee_machine: {id}\n\
         \x20 tasks:\n",
        id = record.id,
        def = record.definition,
    );
    for (n, step) in recorded_path(history).iter().enumerate() {
        let n = n + 1;
        let wait_state = if step.by_timer { &step.to } else { &step.from };
        out.push_str(&format!(
            "    - name: \"step {n}: wait until {id} may take `{wait_state}`\"\n\
             \x20     ansible.builtin.uri:\n\
             \x20       url: \"{{{{ levee_server }}}}/machines/{{{{ levee_machine }}}}/state?state={wait_state}\"\n\
             \x20       headers: \"{{{{ levee_headers }}}}\"\n\
             \x20       status_code: [200, 406]\n\
             \x20     register: levee_check\n\
             \x20     until: levee_check.status == 200\n\
             \x20     retries: 720\n\
             \x20     delay: 5\n",
            id = record.id,
        ));
        if step.by_timer {
            continue;
        }
        let event = step.event.as_deref().unwrap_or(levee_model::DEFAULT_EVENT);
        out.push_str(&format!(
            "    # (the work of `{from}` goes here)\n\
             \x20   - name: \"step {n}: report `{from}` done\"\n\
             \x20     ansible.builtin.uri:\n\
             \x20       url: \"{{{{ levee_server }}}}/machines/{{{{ levee_machine }}}}/state?state={from}&event={event}\"\n\
             \x20       method: PUT\n\
             \x20       headers: \"{{{{ levee_headers }}}}\"\n\
             \x20       status_code: 200\n",
            from = step.from,
        ));
    }
    out
}

fn chef(record: &MachineRecord, history: &[HistoryEntry], server: &str) -> String {
    let mut out = format!(
        "# The recorded path of machine `{id}` (definition `{def}`), exported by Levee.\n\
         # Each resource runs only when Levee says the machine may take its step, and reports\n\
         # the step done. Replace `true` with the step's command.\n\
         levee = ENV.fetch('LEVEE_SERVER', '{server}')\n\
         auth = ENV['LEVEE_TOKEN'] ? \"-H 'Authorization: Bearer #{{ENV['LEVEE_TOKEN']}}'\" : ''\n",
        id = record.id,
        def = record.definition,
    );
    for (n, step) in recorded_path(history).iter().enumerate() {
        if step.by_timer {
            continue;
        }
        let event = step.event.as_deref().unwrap_or(levee_model::DEFAULT_EVENT);
        out.push_str(&format!(
            "\nexecute 'step {n}: {from}' do\n\
             \x20 command \"true && curl -fsS #{{auth}} -X PUT '#{{levee}}/machines/{id}/state?state={from}&event={event}'\"\n\
             \x20 only_if \"curl -fsS #{{auth}} '#{{levee}}/machines/{id}/state?state={from}'\"\n\
             end\n",
            n = n + 1,
            from = step.from,
            id = record.id,
        ));
    }
    out
}
