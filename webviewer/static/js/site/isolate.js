// Cross-origin isolation on a static host (agora-export site): hosts like GitHub Pages or S3 cannot
// send the COOP/COEP headers, so the service worker sw.js (at the site's root) adds them to every
// same-origin response. A page that is not yet isolated registers it and, once it controls the
// page, reloads once so the page itself arrives with the headers. A classic script, run before the
// page's modules; a page the agora server sends is already isolated and skips all of it.
(function isolate() {
  if (globalThis.crossOriginIsolated || !globalThis.isSecureContext || !("serviceWorker" in navigator)) return;
  const key = "agora-isolation-reload";
  const root = new URL("../../../", document.currentScript.src); // this file is static/js/site/isolate.js
  navigator.serviceWorker.register(new URL("sw.js", root), { scope: root.pathname }).then(() => navigator.serviceWorker.ready)
    .then(() => {
      if (sessionStorage.getItem(key)) return; // reloaded once already: do not loop (e.g. headers refused)
      sessionStorage.setItem(key, "1");
      location.reload();
    })
    .catch((err) => console.warn(`agora: no service worker, so no cross-origin isolation: ${err.message}`));
})();
