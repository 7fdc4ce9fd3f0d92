// The one-time password page. The key is in the URL fragment, which browsers never send to the
// server. Selecting "Reveal password" proves the key (SHA-256 of "pwrelay-claim" and the key),
// claims the ciphertext once, and decrypts it here with WebCrypto (AES-256-GCM: 12-byte nonce,
// then ciphertext and tag). Nothing is consumed until the button is selected.
"use strict";

(function () {
  const main = document.querySelector("main");
  if (!main || main.dataset.state !== "active") return;
  const button = document.getElementById("reveal");
  const status = document.getElementById("status");
  const result = document.getElementById("result");
  const output = document.getElementById("password");
  const copy = document.getElementById("copy");

  function fromBase64Url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }
  function toBase64Url(bytes) {
    let raw = "";
    bytes.forEach((b) => { raw += String.fromCharCode(b); });
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function problem(text) {
    status.textContent = text;
    status.className = "problem";
  }

  const fragment = window.location.hash.slice(1);
  let key;
  try {
    key = fromBase64Url(fragment);
  } catch (e) {
    key = new Uint8Array(0);
  }
  if (key.length !== 32) {
    button.disabled = true;
    problem("This link is incomplete. Open the whole link from your message, including the part after #.");
    return;
  }
  if (!window.crypto || !window.crypto.subtle) {
    button.disabled = true;
    problem("This browser cannot decrypt the password here. Open the link in a current browser.");
    return;
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    status.className = "";
    status.textContent = "Fetching…";
    try {
      const context = new TextEncoder().encode("pwrelay-claim");
      const material = new Uint8Array(context.length + key.length);
      material.set(context);
      material.set(key, context.length);
      const proof = new Uint8Array(await crypto.subtle.digest("SHA-256", material));
      const response = await fetch(`/r/${encodeURIComponent(main.dataset.link)}/claim`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ proof: toBase64Url(proof) }),
        credentials: "omit",
        cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        problem((body.error && body.error.message) || `The password cannot be shown (${response.status}).`);
        return;
      }
      const sealed = fromBase64Url(body.ciphertext);
      const aes = await crypto.subtle.importKey("raw", key, { name: "AES-GCM" }, false, ["decrypt"]);
      const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: sealed.slice(0, 12) }, aes, sealed.slice(12));
      output.textContent = new TextDecoder().decode(plain);
      result.hidden = false;
      status.textContent = "";
      button.hidden = true;
      document.getElementById("intro").hidden = true;
      history.replaceState(null, "", window.location.pathname);
    } catch (e) {
      problem("The password could not be decrypted. The link may have been changed; ask your manager for a new one.");
    }
  });

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(output.textContent);
      copy.textContent = "Copied";
    } catch (e) {
      copy.textContent = "Select the password and copy it";
    }
  });
})();
