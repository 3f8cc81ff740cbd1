// The landing page's WebSocket test client (/ansys/nexus/): connects with the subprotocol
// binary, shows every message received as hex and as text, and sends text. Its URL
// defaults to this gateway's WebSocket listener, as /v1/services says where it is.
import { gatewayRoot, websocketPlace, websocketUrl } from './places.js';

(function () {
  var MAX_SHOWN = 256;       // bytes shown per message; the rest is counted, not printed
  var MAX_LINES = 500;       // older log lines are dropped so a busy stream stays usable
  var socket = null;
  var $ = function (id) { return document.getElementById(id); };

  // Where this gateway's WebSocket listener is (/v1/services; nexusws ignores the path,
  // a front proxy routes on it); until it answers, or if it does not, a guess.
  var root = gatewayRoot(location.pathname);
  $("url").value = websocketUrl(websocketPlace(null, location, root));
  fetch(new URL(root + "v1/services", location.href), { cache: "no-store" }).then(function (answer) {
    return answer.ok ? answer.json() : null;
  }).then(function (info) {
    if (info && !socket) { $("url").value = websocketUrl(websocketPlace(info.websocket, location, root)); }
  }).catch(function () {});

  function show(kind, text) {
    var line = document.createElement("div");
    line.className = kind;
    // textContent, never innerHTML: received data must not become markup.
    line.textContent = new Date().toISOString().slice(11, 23) + " " + text;
    var log = $("log");
    log.appendChild(line);
    while (log.childNodes.length > MAX_LINES) { log.removeChild(log.firstChild); }
    log.scrollTop = log.scrollHeight;
  }

  function hex(bytes) {
    var out = [];
    for (var i = 0; i < bytes.length; i++) { out.push((bytes[i] < 16 ? "0" : "") + bytes[i].toString(16)); }
    return out.join(" ");
  }

  function printable(bytes) {
    var text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    return text.replace(/[\u0000-\u001f\u007f]/g, ".");
  }

  function setState(state) {
    $("state").textContent = state;
    var open = state === "open";
    $("connect").disabled = state !== "closed";
    $("disconnect").disabled = state === "closed";
    $("send").disabled = !open;
  }

  $("connect-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var url = $("url").value.trim();
    try {
      socket = new WebSocket(url, ["binary"]);
    } catch (err) {
      show("error", "cannot connect: " + err.message);
      return;
    }
    socket.binaryType = "arraybuffer";
    setState("connecting");
    show("info", "connecting to " + url);
    socket.onopen = function () {
      setState("open");
      show("info", "open, subprotocol: " + (socket.protocol || "(none)"));
    };
    socket.onmessage = function (event) {
      if (typeof event.data === "string") {
        show("in", "text (" + event.data.length + " chars): " + event.data);
        return;
      }
      var bytes = new Uint8Array(event.data);
      var shown = bytes.subarray(0, MAX_SHOWN);
      var more = bytes.length > MAX_SHOWN ? " ..." : "";
      show("in", "binary (" + bytes.length + " bytes)\n  hex:  " + hex(shown) + more +
           "\n  text: " + printable(shown) + more);
    };
    socket.onerror = function () { show("error", "WebSocket error (details are in the browser console)"); };
    socket.onclose = function (event) {
      show("info", "closed: code " + event.code + (event.reason ? ", reason: " + event.reason : "") +
           (event.wasClean ? "" : " (not clean)"));
      setState("closed");
      socket = null;
    };
  });

  $("disconnect").addEventListener("click", function () {
    if (socket) { setState("closing"); socket.close(1000, "closed by user"); }
  });

  $("send-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!socket || socket.readyState !== WebSocket.OPEN) { return; }
    var text = $("text").value;
    if ($("as-binary").checked) {
      var bytes = new TextEncoder().encode(text);
      socket.send(bytes);
      show("out", "sent binary (" + bytes.length + " bytes): " + hex(bytes.subarray(0, MAX_SHOWN)));
    } else {
      socket.send(text);
      show("out", "sent text (" + text.length + " chars): " + text);
    }
  });

  setState("closed");
})();
