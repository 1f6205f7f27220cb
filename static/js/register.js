// "Test connection" on the register/edit form: POST transport + address to the JSON endpoint and explain
// the result (online / unauthorized with the key fingerprint and what to do / offline / invalid).

const form = document.getElementById("device-form");
const button = document.getElementById("test-connection");
const output = document.getElementById("test-result");

function show(kind, title, lines = [], steps = []) {
  output.hidden = false;
  output.className = `result ${kind}`;
  output.dataset.result = kind;
  const heading = document.createElement("strong");
  heading.textContent = title;
  output.replaceChildren(heading);
  for (const line of lines) {
    const p = document.createElement("div");
    p.textContent = line;
    output.append(p);
  }
  if (steps.length) {
    const list = document.createElement("ol");
    for (const step of steps) {
      const item = document.createElement("li");
      item.textContent = step;
      list.append(item);
    }
    output.append(list);
  }
}

button?.addEventListener("click", async () => {
  const body = new URLSearchParams();
  body.set("transport", form.elements.transport.value);
  body.set("address", form.elements.address.value);
  button.disabled = true;
  show("pending", "Testing…");
  try {
    const response = await fetch(button.dataset.url, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": form.elements.csrfmiddlewaretoken.value, Accept: "application/json" },
    });
    const result = await response.json();
    if (result.result === "online") {
      show("online", "Online", [result.message]);
      // A stock phone with Termux: preselect what it needs (the person can still change it).
      if (result.runtime === "app" && form.elements.runtime) {
        form.elements.runtime.value = "app";
        if (form.elements.work_dir) form.elements.work_dir.value = "/sdcard/fedfleet/";
      }
    } else if (result.result === "unauthorized") {
      show("unauthorized", "Unauthorized", [result.message, `Platform key fingerprint: ${result.fingerprint}`], result.how_to || []);
    } else if (result.result === "offline") show("offline", "Offline", [result.message]);
    else if (result.result === "invalid") {
      const messages = Object.values(result.errors || {}).flat().map((e) => e.message);
      show("invalid", "Check the address", messages);
    } else show("error", "Could not test", [result.error || `HTTP ${response.status}`]);
  } catch (error) {
    show("error", "Could not test", [String(error)]);
  } finally {
    button.disabled = false;
  }
});
