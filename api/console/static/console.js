// The console's scripts: calls to the API (with the console's header, signing in again when the
// access token has run out), the send form and its confirmation, and a broadcast's live coverage.
(() => {
  "use strict";
  const T = JSON.parse(document.getElementById("labels").textContent);
  const CONSOLE = { "X-Cunxiang-Console": "1" };
  const zh = document.documentElement.lang.startsWith("zh");

  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-Cunxiang-Console"] = "1";
  });

  async function api(method, path, body) {
    const call = () =>
      fetch(path, {
        method,
        credentials: "same-origin",
        headers: body === undefined ? CONSOLE : { ...CONSOLE, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    let answer = await call();
    if (answer.status === 401) {
      const renewed = await fetch("/session/refresh", { method: "POST", credentials: "same-origin", headers: CONSOLE });
      if (!renewed.ok) {
        location.href = "/login?next=" + encodeURIComponent(location.pathname);
        throw new Error(T.error);
      }
      answer = await call();
    }
    const data = answer.status === 204 ? null : await answer.json().catch(() => null);
    if (!answer.ok) {
      const detail = data && data.detail;
      throw new Error(typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : answer.statusText);
    }
    return data;
  }

  // For the pages' own scripts (fleet.js): the same calls, header and renewal.
  window.cunxiang = { api, labels: T };

  function showError(element, message) {
    element.textContent = message;
    element.hidden = !message;
  }

  const BANNERS = { actual: T.actual_banner, exercise: T.drill_banner, test: T.test_banner };

  // Sending: the form, the preview in words, then the send with the preview's confirmation.
  const form = document.getElementById("send-form");
  if (form) {
    const confirmPanel = document.getElementById("confirm");
    const error = document.getElementById("send-error");
    const levels = document.getElementById("levels");
    let pending = null;
    const sync = () => {
      levels.hidden = form.kind.value !== "emergency";
      document.body.dataset.status = form.status.value;
    };
    form.addEventListener("change", sync);
    sync();

    const request = () => {
      const checked = (name) => [...form.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
      const body = {
        kind: form.kind.value,
        status: form.status.value,
        regions: checked("region"),
        groups: checked("group"),
        language: "zh-CN",
        expires_in: Number(form.expires_in.value),
      };
      if (form.programme_id.value) body.programme_id = form.programme_id.value;
      else body.text = form.text.value.trim();
      if (body.kind === "emergency") body.level = Number(form.level.value);
      if (form.event.value.trim()) body.event = form.event.value.trim();
      return body;
    };

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(error, "");
      const body = request();
      if (!body.regions.length && !body.groups.length) return showError(error, T.choose_target);
      if (!body.programme_id && !body.text) return showError(error, T.choose_content);
      try {
        const preview = await api("POST", "/api/v1/broadcasts/preview", body);
        pending = { ...body, confirmation: preview.confirmation };
        const banner = document.getElementById("confirm-banner");
        banner.className = "banner banner-" + body.status;
        banner.textContent = BANNERS[body.status];
        document.getElementById("confirm-summary").textContent = zh ? preview.summary_zh : preview.summary;
        document.getElementById("confirm-summary-other").textContent = zh ? preview.summary : preview.summary_zh;
        document.getElementById("confirm-approval").hidden = !preview.needs_approval;
        form.hidden = true;
        confirmPanel.hidden = false;
        document.getElementById("confirm-send").focus();
      } catch (failure) {
        showError(error, failure.message);
      }
    });
    document.getElementById("confirm-back").addEventListener("click", () => {
      confirmPanel.hidden = true;
      form.hidden = false;
    });
    document.getElementById("confirm-send").addEventListener("click", async (event) => {
      event.target.disabled = true;
      try {
        const sent = await api("POST", "/api/v1/broadcasts", pending);
        location.href = "/broadcasts/" + sent.id;
      } catch (failure) {
        confirmPanel.hidden = true;
        form.hidden = false;
        event.target.disabled = false;
        showError(error, failure.message);
      }
    });
    document.getElementById("listen").addEventListener("click", async () => {
      showError(error, "");
      try {
        const speech = await api("POST", "/api/v1/speech", { text: form.text.value.trim(), language: "zh-CN" });
        const audio = document.getElementById("listen-audio");
        audio.src = speech.url;
        audio.hidden = false;
        audio.play().catch(() => {});
      } catch (failure) {
        showError(error, failure.message);
      }
    });
  }

  // A broadcast: coverage climbing from the event stream, the townships, who did not play it.
  const page = document.getElementById("broadcast");
  if (page) {
    const id = page.dataset.id;
    const STATES = ["pending", "sent", "received", "playing", "completed", "preempted", "rejected", "failed", "expired", "cancelled"];
    const percent = (part, whole) => (whole ? Math.floor((100 * part) / whole) : 0) + "%";
    const cell = (text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    };
    const draw = (snapshot) => {
      const counts = snapshot.counts;
      const played = (counts.completed || 0) + (counts.playing || 0);
      const coverage = percent(played, snapshot.terminals);
      document.getElementById("coverage-bar").style.width = coverage;
      document.getElementById("coverage-text").textContent = `${coverage} · ${played} / ${snapshot.terminals} ${T.terminals}`;
      const body = document.querySelector("#counts tbody");
      body.replaceChildren(
        ...STATES.filter((s) => counts[s]).map((s) => {
          const row = document.createElement("tr");
          row.className = "count-" + s;
          row.append(cell(T["state_" + s]), cell(counts[s]));
          return row;
        }),
      );
      const regions = document.querySelector("#by-region tbody");
      regions.replaceChildren(
        ...snapshot.by_region.map((r) => {
          const row = document.createElement("tr");
          const total = r.terminals ?? Object.values(r.counts).reduce((a, b) => a + b, 0);
          const done = (r.counts.completed || 0) + (r.counts.playing || 0);
          row.append(cell(`${r.name || ""} ${r.code}`), cell(total), cell(r.counts.completed || 0), cell(r.counts.playing || 0), cell(r.counts.failed || 0), cell(percent(done, total)));
          return row;
        }),
      );
      const state = document.getElementById("bstate");
      state.textContent = T["bstate_" + snapshot.state] || snapshot.state;
      state.className = "bstate bstate-" + snapshot.state;
    };
    // Why a terminal did not play it, in the reader's language (the report's `why` is English).
    const why = (terminal) => {
      if (terminal.silent) {
        const silence = T["silent_" + terminal.presence] || terminal.why;
        return `${T["state_" + terminal.state] || terminal.state}: ${silence}`;
      }
      const parts = [T["why_state_" + terminal.state] || terminal.state];
      if (terminal.reason) parts.push(T["reason_" + terminal.reason] || terminal.reason);
      if (terminal.detail) parts.push(terminal.detail);
      return parts.join(": ") + (terminal.by ? ` (${T.ended_by} ${terminal.by})` : "");
    };
    const drawMisses = (report) => {
      const box = document.getElementById("not-played");
      box.replaceChildren(
        ...report.not_played.map((village) => {
          const block = document.createElement("details");
          const summary = document.createElement("summary");
          summary.textContent = `${village.township_name || ""} ${village.name || village.code} (${village.count})`;
          const list = document.createElement("ul");
          list.append(
            ...village.terminals.map((terminal) => {
              const item = document.createElement("li");
              item.textContent = `${terminal.id} — ${why(terminal)}`;
              return item;
            }),
          );
          block.append(summary, list);
          return block;
        }),
      );
    };
    // The stream's `end` event carries the final report; a periodic report asked for before it
    // may answer after it, and must not put the older picture back (a cancelled broadcast shown
    // "cancelling" again, with terminals still "playing", and nothing left to correct it).
    let ended = false;
    const report = async () => {
      const found = await api("GET", `/api/v1/broadcasts/${id}?list_limit=200`);
      if (ended) return found;
      draw(found);
      drawMisses(found);
      return found;
    };
    report().catch(() => {});
    const dot = document.getElementById("live-dot");
    const stream = new EventSource(`/api/v1/broadcasts/${id}/events`);
    stream.addEventListener("open", () => dot.classList.add("on"));
    stream.addEventListener("progress", (event) => draw(JSON.parse(event.data)));
    stream.addEventListener("end", (event) => {
      ended = true;
      const final = JSON.parse(event.data);
      draw(final);
      drawMisses(final);
      stream.close();
      dot.classList.remove("on");
    });
    const misses = setInterval(() => (stream.readyState === EventSource.CLOSED ? clearInterval(misses) : report().catch(() => {})), 5000);

    const error = document.getElementById("action-error");
    page.querySelectorAll("button[data-action]").forEach((button) =>
      button.addEventListener("click", async () => {
        if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
        button.disabled = true;
        try {
          const answer = await api("POST", `/api/v1/broadcasts/${id}/${button.dataset.action}`);
          location.href = "/broadcasts/" + (button.dataset.action === "false-alarm" ? answer.id : id);
        } catch (failure) {
          button.disabled = false;
          showError(error, failure.message);
        }
      }),
    );
  }
})();
