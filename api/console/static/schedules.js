// Keeping a schedule: the form becomes the API's ScheduleSpec; the conflicts it answers are shown.
(() => {
  "use strict";
  const form = document.getElementById("schedule-form");
  if (!form) return;
  const T = JSON.parse(document.getElementById("labels").textContent);
  const error = document.getElementById("schedule-error");
  const show = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };
  const id = form.dataset.id;
  const preset = form.preset;
  const rrule = form.rrule;
  const sync = () => {
    if (preset.value !== "custom") rrule.value = preset.value;
    rrule.readOnly = preset.value !== "custom";
  };
  preset.addEventListener("change", sync);
  sync();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show("");
    const regions = [...new Set([...form.querySelectorAll("input[name=region]:checked")].map((i) => i.value))];
    if (!regions.length) return show(T.choose_target);
    const spec = {
      name: form.name.value.trim(),
      programme_id: form.programme_id.value,
      regions,
      start: form.start.value,
      rrule: rrule.value.trim() || null,
      until: form.until.value || null,
      expires_in_s: Number(form.expires_min.value) * 60,
      enabled: form.enabled.checked,
    };
    try {
      const saved = await window.cunxiang.api(id ? "PUT" : "POST", id ? `/api/v1/schedules/${id}` : "/api/v1/schedules", spec);
      const list = document.getElementById("conflict-list");
      list.replaceChildren(
        ...saved.conflicts.map((c) => {
          const item = document.createElement("li");
          item.textContent = `${c.name}: ${c.terminals} ${T.terminals}, ${c.first_overlap.replace("T", " ").slice(0, 16)} (${c.overlaps}×)`;
          return item;
        }),
      );
      document.getElementById("conflicts").hidden = saved.conflicts.length === 0;
      form.hidden = true;
      document.getElementById("saved").hidden = false;
    } catch (failure) {
      show(failure.message);
    }
  });
  const remove = document.getElementById("schedule-delete");
  if (remove) {
    remove.addEventListener("click", async () => {
      if (!window.confirm(remove.dataset.confirm)) return;
      try {
        await window.cunxiang.api("DELETE", `/api/v1/schedules/${id}`);
        location.href = "/schedules";
      } catch (failure) {
        show(failure.message);
      }
    });
  }
})();
