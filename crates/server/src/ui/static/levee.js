// Levee's web UI: sends the pages' forms to the JSON API and keeps a run page live from its
// server-sent-event stream. No framework, no build step; served from the binary.
'use strict';
(function () {
  // Set on every API call: with the sign-in cookie, the server accepts a request that changes
  // something only with this header, which another site's page cannot send.
  var UI_HEADER = 'X-Levee-UI';
  // After a burst of live changes, the page re-reads its live parts from the server this much
  // later (milliseconds), so what it shows is the committed state, not only what it inferred.
  var RECONCILE_DELAY_MS = 1500;
  // How long a task page waits after a change of its task before showing it anew, so a burst
  // of entries costs one reload (milliseconds).
  var TASK_RELOAD_DELAY_MS = 300;
  // How often a maintenance's page re-reads itself while it goes on (milliseconds).
  var MAINTENANCE_REFRESH_MS = 3000;
  // How often a drain test's page (or the list) re-reads itself while an execution goes on
  // (milliseconds).
  var DRAIN_TEST_REFRESH_MS = 3000;
  // How often the runs list re-reads the runs (milliseconds).
  var RUNS_REFRESH_MS = 2000;
  var ENDED = { succeeded: true, failed: true, aborted: true };
  var TASK_STATUS = {
    task_dispatched: 'running', task_started: 'running', task_requeued: 'ready',
    task_succeeded: 'succeeded', task_retrying: 'retrying', task_failed: 'failed',
    task_stalled: 'stalled', task_skipped: 'skipped', task_cancelled: 'cancelled',
    task_retried: 'ready', condition_overridden: 'running'
  };
  var RUN_STATUS = {
    run_started: 'running', run_paused: 'paused', run_resumed: 'running',
    run_aborted: 'aborted', run_reopened: 'running'
  };

  var body = document.body;
  var statusLine = document.getElementById('status');

  function say(text, isError) {
    if (!statusLine) { return; }
    statusLine.textContent = text;
    statusLine.className = isError ? 'status error' : 'status';
  }

  function api(method, path, payload) {
    var init = { method: method, credentials: 'same-origin', headers: {} };
    init.headers[UI_HEADER] = '1';
    if (payload !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var message = data && data.error && data.error.message ? data.error.message : text;
          throw new Error(response.status + ': ' + message);
        }
        return data;
      });
    });
  }

  // ---- Controls -------------------------------------------------------------------------

  function field(form, name) {
    var element = form.elements.namedItem(name);
    return element ? String(element.value).trim() : '';
  }

  // A dangerous action (abort, skip, the global pause, starting a large or capacity-changing
  // run, cancelling or approving a maintenance past the blast-radius threshold) goes ahead
  // only when its target's name was typed into the confirmation field. `data-confirm-for`
  // lists the actions that need it, separated by spaces.
  function confirmation(form, action) {
    var input = form.querySelector('[data-confirm-for]');
    if (!input || input.getAttribute('data-confirm-for').split(' ').indexOf(action) < 0) {
      return null;
    }
    var expected = input.hasAttribute('data-confirm-task') ? field(form, 'task') :
      input.getAttribute('data-confirm-value');
    if (input.value.trim() !== expected) {
      input.focus();
      return 'To ' + action + ', type "' + expected + '" in "' +
        (input.labels && input.labels[0] ? input.labels[0].textContent : 'confirm') + '".';
    }
    return null;
  }

  function submitControl(form) {
    var control = field(form, 'control');
    var problem = confirmation(form, control);
    if (problem) { say(problem, true); return; }
    var payload = { control: control, reason: field(form, 'reason') };
    var task = field(form, 'task');
    if (task) { payload.task = task; }
    if (control === 'override_weak_dep') { payload.dep = field(form, 'dep'); }
    if (control === 'set_pace') {
      payload.pace = {};
      if (field(form, 'pace_step')) { payload.pace.step = field(form, 'pace_step'); }
      if (field(form, 'pace_wait')) { payload.pace.wait = field(form, 'pace_wait'); }
    }
    var run = form.getAttribute('data-run');
    say('Sending ' + control + '…', false);
    api('POST', '/api/v1/runs/' + encodeURIComponent(run) + '/controls', payload).then(function () {
      say(control + (task ? ' ' + task : '') + ': done.', false);
      if (body.getAttribute('data-page') === 'task') { window.location.reload(); return; }
      form.elements.namedItem('reason').value = '';
      var confirmInput = form.elements.namedItem('confirm');
      if (confirmInput) { confirmInput.value = ''; }
      scheduleReconcile(0);
    }, function (error) { say(control + ' refused: ' + error.message, true); });
  }

  function submitPause(form) {
    var paused = field(form, 'paused') === 'true';
    if (paused) {
      var problem = confirmation(form, 'pause');
      if (problem) { say(problem, true); return; }
    }
    api('PUT', '/api/v1/pause', { paused: paused, reason: field(form, 'reason') }).then(function () {
      window.location.reload();
    }, function (error) { say('Refused: ' + error.message, true); });
  }

  // Starts the run whose plan the page shows, with the parameters the plan was made for and
  // the page's own run name (a second click gets the same run), then opens it.
  function submitStart(form) {
    var problem = confirmation(form, 'start');
    if (problem) { say(problem, true); return; }
    var runbook = form.getAttribute('data-runbook');
    var payload = {
      params: JSON.parse(form.getAttribute('data-params') || '{}'),
      name: form.getAttribute('data-name')
    };
    say('Starting ' + runbook + '…', false);
    api('POST', '/api/v1/runbooks/' + encodeURIComponent(runbook) + '/runs', payload).then(function (run) {
      window.location.assign('/ui/runs/' + encodeURIComponent(run.id));
    }, function (error) { say('Start refused: ' + error.message, true); });
  }

  function submitMaintenance(form) {
    var action = field(form, 'action');
    var problem = confirmation(form, action);
    if (problem) { say(problem, true); return; }
    var payload = { action: action, reason: field(form, 'reason') };
    if (field(form, 'service')) { payload.service = field(form, 'service'); }
    if (field(form, 'host')) { payload.host = field(form, 'host'); }
    var id = form.getAttribute('data-maintenance');
    say('Sending ' + action + '…', false);
    api('POST', '/api/v1/maintenances/' + encodeURIComponent(id) + '/controls', payload).then(function () {
      window.location.reload();
    }, function (error) { say(action + ' refused: ' + error.message, true); });
  }

  // Runs a drain test now (the API checks the role, refuses while one runs, and audits),
  // once its name was typed; the page then shows the new execution and follows it.
  function submitDrainTest(form) {
    var problem = confirmation(form, 'run');
    if (problem) { say(problem, true); return; }
    var name = form.getAttribute('data-drain-test');
    say('Starting drain test ' + name + '…', false);
    api('POST', '/api/v1/drain-tests/' + encodeURIComponent(name) + '/run').then(function (execution) {
      say('Started ' + execution.id + '.', false);
      window.location.reload();
    }, function (error) { say('Run now refused: ' + error.message, true); });
  }

  document.addEventListener('submit', function (event) {
    var form = event.target;
    var kind = form.getAttribute('data-api');
    if (!kind) { return; }
    event.preventDefault();
    if (kind === 'control') { submitControl(form); } else if (kind === 'pause') { submitPause(form); }
    else if (kind === 'start') { submitStart(form); } else if (kind === 'maintenance') { submitMaintenance(form); }
    else if (kind === 'drain-test') { submitDrainTest(form); }
  });

  // Choosing "confirm SERVICE" on a maintenance also chooses the service.
  document.addEventListener('change', function (event) {
    if (event.target.id !== 'maint-action') { return; }
    var option = event.target.selectedOptions[0];
    var service = option ? option.getAttribute('data-service') : null;
    var select = document.getElementById('maint-service');
    if (service && select) { select.value = service; }
  });

  // "Steer" in a task's row: fill the task form with it and a likely action, then move the
  // focus to the reason.
  document.addEventListener('click', function (event) {
    var button = event.target.closest ? event.target.closest('[data-steer]') : null;
    if (!button) { return; }
    var form = document.getElementById('task-form');
    if (!form) { return; }
    var task = button.getAttribute('data-steer');
    form.elements.namedItem('task').value = task;
    var status = rows.status(task);
    var action = status === 'stalled' ? 'override_condition' :
      status === 'failed' ? 'retry' :
      button.getAttribute('data-stage') === 'approval' ? 'approve' : null;
    if (action) { form.elements.namedItem('control').value = action; }
    form.elements.namedItem('reason').focus();
  });

  // ---- A run page, live ---------------------------------------------------------------

  // The table's rows and the graph's nodes by task id, found once and again after a
  // reconcile replaced the rows.
  var rows = {
    byId: null,
    index: function () {
      var byId = new Map();
      document.querySelectorAll('tr[data-task]').forEach(function (row) {
        byId.set(row.getAttribute('data-task'), { row: row, node: null, status: null });
      });
      document.querySelectorAll('g[data-node]').forEach(function (node) {
        var entry = byId.get(node.getAttribute('data-node'));
        if (entry) { entry.node = node; }
      });
      byId.forEach(function (entry) {
        entry.status = entry.row.querySelector('[data-field=status]').textContent;
      });
      this.byId = byId;
    },
    get: function (id) {
      if (!this.byId) { this.index(); }
      return this.byId.get(id);
    },
    status: function (id) {
      var entry = this.get(id);
      return entry ? entry.status : null;
    }
  };

  var live = window.leveeLive = {
    // Task state changes applied to the page, and journal entries received: the browser
    // test reads these to measure how fast the page keeps up.
    applied: 0,
    received: 0,
    frames: 0,
    version: Number(body.getAttribute('data-version') || 0),
    firstAppliedAt: 0,
    lastAppliedAt: 0,
    reconciles: 0
  };

  function setCount(status, delta) {
    var element = document.querySelector('[data-count="' + status + '"]');
    if (element) { element.textContent = String(Number(element.textContent) + delta); }
  }

  function setTaskStatus(id, status, reason) {
    var entry = rows.get(id);
    if (!entry) { return; }
    if (entry.status !== status) {
      setCount(entry.status, -1);
      setCount(status, 1);
      var badge = entry.row.querySelector('[data-field=status]');
      badge.textContent = status;
      badge.className = 'st st-' + status;
      if (entry.node) {
        entry.node.setAttribute('class', entry.node.getAttribute('class')
          .replace(/\bst-[a-z_]+/, 'st-' + status));
      }
      entry.status = status;
      entry.row.querySelector('[data-field=why]').textContent = '';
      var done = document.querySelector('[data-run-done]');
      var progress = document.querySelector('[data-run-progress]');
      if (done && progress) {
        var count = Number(document.querySelector('[data-count=succeeded]').textContent) +
          Number(document.querySelector('[data-count=skipped]').textContent);
        done.textContent = String(count);
        progress.value = count;
      }
    }
    if (reason !== undefined) {
      entry.row.querySelector('[data-field=reason]').textContent = reason;
    }
  }

  function setRunStatus(status) {
    var badge = document.querySelector('[data-run-status]');
    if (badge) {
      badge.textContent = status;
      badge.className = 'st st-' + status;
    }
  }

  function applyEntry(entry) {
    // Entries of the version the page shows are applied again: a commit's entries, in order, lead to
    // that commit's state, so repeating them changes nothing, and one commit's entries may
    // arrive in two frames.
    if (entry.version < live.version) { return; }
    var kind = entry.kind;
    if (entry.task) {
      var status = TASK_STATUS[kind];
      var entryRow = rows.get(entry.task);
      if (status) {
        live.applied += 1;
        live.lastAppliedAt = performance.now();
        if (!live.firstAppliedAt) { live.firstAppliedAt = live.lastAppliedAt; }
        var reason = kind === 'task_stalled' ? entry.stall_reason :
          (kind === 'task_failed' || kind === 'task_retrying') ? entry.error : undefined;
        if (kind === 'task_succeeded' || kind === 'task_dispatched') { reason = ''; }
        setTaskStatus(entry.task, status, reason);
      } else if (kind === 'step_committed' && entryRow) {
        entryRow.row.querySelector('[data-field=step]').textContent = 'step ' + entry.step +
          (entry.state ? ' · ' + JSON.stringify(entry.state) : '');
      }
    } else if (RUN_STATUS[kind]) {
      setRunStatus(RUN_STATUS[kind]);
    } else if (kind === 'run_finished') {
      setRunStatus(entry.status);
    }
  }

  var queue = [];
  var frameRequested = false;

  // Applies everything that arrived since the last frame in one go: a burst of hundreds of
  // transitions costs one layout, not hundreds.
  function flush() {
    frameRequested = false;
    live.frames += 1;
    var batch = queue;
    queue = [];
    for (var i = 0; i < batch.length; i += 1) { applyEntry(batch[i]); }
    var last = batch[batch.length - 1];
    if (last && last.version > live.version) { live.version = last.version; }
    scheduleReconcile(RECONCILE_DELAY_MS);
  }

  var reconcileTimer = null;
  function scheduleReconcile(delay) {
    if (!body.getAttribute('data-run') || reconcileTimer !== null) { return; }
    reconcileTimer = setTimeout(reconcile, delay);
  }

  // Re-reads the page's live parts from the server and puts in whatever differs.
  function reconcile() {
    var run = body.getAttribute('data-run');
    fetch('/ui/runs/' + encodeURIComponent(run) + '/parts', { credentials: 'same-origin' })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html');
        ['summary', 'gantt'].forEach(function (part) {
          var now = document.querySelector('[data-part="' + part + '"]');
          var next = fresh.querySelector('[data-part="' + part + '"]');
          if (now && next && now.innerHTML !== next.innerHTML) { now.innerHTML = next.innerHTML; }
        });
        fresh.querySelectorAll('tr[data-task]').forEach(function (nextRow) {
          var entry = rows.get(nextRow.getAttribute('data-task'));
          if (!entry) { return; }
          var cells = entry.row.children;
          var nextCells = nextRow.children;
          for (var i = 0; i < cells.length && i < nextCells.length; i += 1) {
            // The steer button keeps its place (and focus); only text cells are replaced.
            if (!cells[i].querySelector('button') && cells[i].innerHTML !== nextCells[i].innerHTML) {
              cells[i].innerHTML = nextCells[i].innerHTML;
            }
          }
          var status = nextRow.querySelector('[data-field=status]').textContent;
          if (entry.node) {
            entry.node.setAttribute('class', entry.node.getAttribute('class')
              .replace(/\bst-[a-z_]+/, 'st-' + status));
          }
          entry.status = status;
        });
        var version = Number(fresh.body.getAttribute('data-version'));
        if (version > live.version) { live.version = version; }
        live.reconciles += 1;
      })
      .catch(function (error) { say('Could not refresh the page: ' + error, true); })
      .then(function () { reconcileTimer = null; });
  }

  function followRun(run) {
    var indicator = document.getElementById('live');
    var source = new EventSource('/api/v1/runs/' + encodeURIComponent(run) + '/events?after=' +
      encodeURIComponent(body.getAttribute('data-after') || '0'));
    source.addEventListener('open', function () { if (indicator) { indicator.textContent = 'live'; } });
    source.addEventListener('error', function () {
      if (indicator) { indicator.textContent = 'live: reconnecting'; }
    });
    source.addEventListener('journal', function (event) {
      live.received += 1;
      queue.push(JSON.parse(event.data));
      if (!frameRequested) {
        frameRequested = true;
        requestAnimationFrame(flush);
      }
    });
  }

  // ---- The runs list, refreshed -------------------------------------------------------

  function refreshRuns() {
    api('GET', '/api/v1/runs?limit=100').then(function (page) {
      var known = 0;
      page.runs.forEach(function (run) {
        var row = document.querySelector('tr[data-run="' + CSS.escape(run.id) + '"]');
        if (!row) { return; }
        known += 1;
        var badge = row.querySelector('[data-field=status]');
        badge.textContent = run.status;
        badge.className = 'st st-' + run.status;
        var progress = row.querySelector('[data-field=progress]');
        progress.max = run.tasks_total;
        progress.value = run.tasks_done;
        row.querySelector('[data-field=done]').textContent = run.tasks_done + '/' + run.tasks_total;
        row.querySelector('[data-field=running]').textContent =
          run.tasks_running > 0 ? run.tasks_running + ' running' : '';
        row.querySelector('[data-field=failed]').textContent =
          run.tasks_failed > 0 ? run.tasks_failed + ' wait for a human' : '';
        if (run.started_at_ms) {
          var end = ENDED[run.status] && run.finished_at_ms ? run.finished_at_ms : Date.now();
          row.querySelector('[data-field=duration]').textContent =
            formatMs(Math.max(0, end - run.started_at_ms));
        }
      });
      if (known < page.runs.length) { window.location.reload(); }
    }, function (error) { say('Could not refresh the runs: ' + error.message, true); });
  }

  function formatMs(ms) {
    if (ms < 1000) { return ms + 'ms'; }
    if (ms < 60000) { return (ms / 1000).toFixed(1) + 's'; }
    if (ms < 3600000) {
      return Math.floor(ms / 60000) + 'm ' + String(Math.floor((ms % 60000) / 1000)).padStart(2, '0') + 's';
    }
    return Math.floor(ms / 3600000) + 'h ' + String(Math.floor((ms % 3600000) / 60000)).padStart(2, '0') + 'm';
  }

  // A task page follows its run's events and shows the task anew when it changes, unless
  // the operator is typing into its form (then it only says so).
  function followTask(run, task) {
    var source = new EventSource('/api/v1/runs/' + encodeURIComponent(run) + '/events?after=' +
      encodeURIComponent(body.getAttribute('data-after') || '0'));
    var timer = null;
    source.addEventListener('journal', function (event) {
      var entry = JSON.parse(event.data);
      if (entry.task !== task || timer !== null) { return; }
      timer = setTimeout(function () {
        var typing = document.activeElement && document.activeElement.form &&
          String(document.activeElement.value || '') !== '';
        if (typing) {
          say('This task changed since the page was shown; reload to see it.', false);
          timer = null;
        } else {
          source.close();
          window.location.reload();
        }
      }, TASK_RELOAD_DELAY_MS);
    });
  }

  // A maintenance's page re-reads itself while the maintenance goes on (the driver moves it
  // in the background), leaving it alone while the operator fills its form; so do the drain
  // test pages while an execution goes on (it marks itself `data-executing`).
  function refreshMain(formId) {
    var form = formId ? document.getElementById(formId) : null;
    var busy = form && (form.contains(document.activeElement) ||
      field(form, 'reason') !== '' || field(form, 'confirm') !== '');
    if (busy) { return; }
    fetch(window.location.href, { credentials: 'same-origin' })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html');
        var now = document.getElementById('main');
        var next = fresh.getElementById('main');
        if (now && next && now.innerHTML !== next.innerHTML) { now.innerHTML = next.innerHTML; }
      })
      .catch(function (error) { say('Could not refresh the page: ' + error, true); });
  }

  var page = body.getAttribute('data-page');
  if (page === 'run' && body.getAttribute('data-run')) {
    followRun(body.getAttribute('data-run'));
  } else if (page === 'task') {
    followTask(body.getAttribute('data-run-id'), body.getAttribute('data-task'));
  } else if (page === 'maintenance' && body.getAttribute('data-ended') !== 'true') {
    setInterval(function () { refreshMain('maint-form'); }, MAINTENANCE_REFRESH_MS);
  } else if ((page === 'drain-test' || page === 'drain-tests') &&
             document.querySelector('[data-executing]')) {
    var timer = setInterval(function () {
      if (!document.querySelector('[data-executing]')) { clearInterval(timer); return; }
      refreshMain('drain-test-form');
    }, DRAIN_TEST_REFRESH_MS);
  } else if (page === 'runs') {
    setInterval(refreshRuns, RUNS_REFRESH_MS);
  }
})();
