/// The web face's page: plain HTML, a stylesheet and a script of our own, no build step and
/// nothing loaded from elsewhere. Everything that comes from other users (names,
/// descriptions, addresses) is put in the page as text (`textContent`), never as HTML.
enum ClientWebPage {
    /// Our own script and style only; nothing from elsewhere, no inline script.
    static let contentSecurityPolicy =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'"

    static let html = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>p2p-client</title>
        <link rel="stylesheet" href="/app.css">
        </head>
        <body>
        <header>
          <h1>p2p-client</h1>
          <span id="who">…</span>
          <nav>
            <button data-tab="search" class="active">Search</button>
            <button data-tab="users">Users</button>
            <button data-tab="transfers">Transfers</button>
            <button data-tab="shares">Shares</button>
            <button data-tab="wishlist">Wishlist</button>
            <button data-tab="console">Console</button>
          </nav>
        </header>
        <main>
          <section id="search">
            <form id="search-form">
              <input id="search-words" placeholder="words of names or descriptions" required>
              <input id="search-exclude" placeholder="words to leave out">
              <select id="search-kind">
                <option value="">any kind</option><option value="audio">audio</option>
                <option value="video">video</option><option value="image">image</option>
                <option value="text">text</option><option value="archive">archive</option>
              </select>
              <button type="submit">Search</button>
            </form>
            <p id="search-status" class="status"></p>
            <div id="search-results"></div>
          </section>
          <section id="users" hidden>
            <button id="users-refresh">Refresh</button>
            <p id="users-status" class="status"></p>
            <ul id="users-list"></ul>
            <div id="browse"></div>
          </section>
          <section id="transfers" hidden>
            <table>
              <thead><tr><th>#</th><th>file</th><th>peers</th><th>progress</th><th>rate</th><th>state</th></tr></thead>
              <tbody id="transfers-rows"></tbody>
            </table>
          </section>
          <section id="shares" hidden>
            <form id="share-form">
              <input id="share-path" placeholder="a folder to share" required>
              <button type="submit">Share</button>
            </form>
            <ul id="shares-list"></ul>
          </section>
          <section id="wishlist" hidden>
            <form id="wish-form">
              <input id="wish-words" placeholder="words to keep looking for" required>
              <label><input id="wish-fetch" type="checkbox" checked> fetch new matches</label>
              <button type="submit">Save</button>
            </form>
            <ul id="wish-list"></ul>
          </section>
          <section id="console" hidden>
            <pre id="console-lines"></pre>
            <form id="console-form">
              <span>c&gt; </span><input id="console-input" placeholder="a command, as typed in the shell" required>
            </form>
          </section>
        </main>
        <script src="/app.js"></script>
        </body>
        </html>
        """

    static let style = """
        body { font: 14px system-ui, sans-serif; margin: 0; color: #222; }
        header { display: flex; gap: 1em; align-items: center; padding: .5em 1em; background: #eef; }
        h1 { font-size: 1.2em; margin: 0; }
        nav button { margin-right: .3em; }
        nav button.active { font-weight: bold; }
        main { padding: 1em; }
        .status { color: #666; }
        .group { margin: .5em 0 1em; }
        .group h3 { margin: .2em 0; font-size: 1em; }
        .folder { margin-left: 1em; }
        .file { margin-left: 2em; }
        .offline { color: #999; }
        .description { color: #555; margin-left: .5em; }
        table { border-collapse: collapse; width: 100%; }
        td, th { border-bottom: 1px solid #ddd; padding: .2em .5em; text-align: left; }
        progress { width: 10em; }
        pre { background: #f6f6f6; padding: .5em; max-height: 30em; overflow: auto; }
        .diagnostic { color: #a40; }
        """

    static let script = """
        "use strict";
        const $ = (id) => document.getElementById(id);
        // The token came in the address: the server set a cookie; take it out of the address bar.
        if (location.search.includes("token=")) history.replaceState(null, "", "/");

        function element(tag, text, className) {
          const node = document.createElement(tag);
          if (text !== undefined) node.textContent = text;
          if (className) node.className = className;
          return node;
        }

        async function api(path, body) {
          const options = body === undefined ? {} :
            { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
          const response = await fetch("/api/v1/" + path, options);
          const text = await response.text();
          let data = null;
          try { data = JSON.parse(text); } catch (e) { data = text; }
          if (!response.ok) throw new Error((data && data.error && data.error.message) || text || response.status);
          return data;
        }

        function bytes(count) {
          const units = ["B", "KiB", "MiB", "GiB", "TiB"];
          let value = count, unit = 0;
          while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
          return unit === 0 ? value + " B" : value.toFixed(1) + " " + units[unit];
        }

        const kinds = {
          audio: ["mp3", "flac", "ogg", "wav", "m4a", "opus"], video: ["mp4", "mkv", "avi", "webm", "mov"],
          image: ["jpg", "jpeg", "png", "gif", "webp", "svg"], text: ["txt", "md", "pdf", "epub", "html"],
          archive: ["zip", "tar", "gz", "xz", "7z", "iso"],
        };
        function kindOf(name) {
          const extension = name.includes(".") ? name.split(".").pop().toLowerCase() : "";
          for (const [kind, list] of Object.entries(kinds)) if (list.includes(extension)) return kind;
          return "other";
        }
        function folderOf(name) { return name.includes("/") ? name.slice(0, name.lastIndexOf("/")) : ""; }

        function download(owner, file) {
          return api("downloads", { owner, file }).then(() => show("transfers"))
            .catch((error) => alert("download of " + file + ": " + error.message));
        }

        // Tabs
        function show(tab) {
          for (const button of document.querySelectorAll("nav button"))
            button.classList.toggle("active", button.dataset.tab === tab);
          for (const section of document.querySelectorAll("main section")) section.hidden = section.id !== tab;
          if (tab === "users") loadUsers();
          if (tab === "shares") loadShares();
          if (tab === "wishlist") loadWishes();
        }
        for (const button of document.querySelectorAll("nav button"))
          button.addEventListener("click", () => show(button.dataset.tab));

        // Who is connected
        async function loadSession() {
          try {
            const s = await api("session");
            $("who").textContent = (s.user ? "online as " + s.user : "offline") + " · " + s.server;
          } catch (error) { $("who").textContent = "session: " + error.message; }
        }

        // Search: grouped by user, then folder
        $("search-form").addEventListener("submit", async (event) => {
          event.preventDefault();
          const words = $("search-words").value.trim();
          const exclude = $("search-exclude").value.toLowerCase().split(/\\s+/).filter(Boolean);
          const kind = $("search-kind").value;
          $("search-status").textContent = "searching…";
          $("search-results").replaceChildren();
          try {
            const hits = (await api("search?q=" + encodeURIComponent(words))).filter((hit) => {
              const text = (hit.name + " " + hit.description).toLowerCase();
              return !exclude.some((word) => text.includes(word)) && (!kind || kindOf(hit.name) === kind);
            });
            $("search-status").textContent = hits.length + " files";
            const byOwner = new Map();
            for (const hit of hits) {
              if (!byOwner.has(hit.owner)) byOwner.set(hit.owner, new Map());
              const folders = byOwner.get(hit.owner);
              const folder = folderOf(hit.name);
              if (!folders.has(folder)) folders.set(folder, []);
              folders.get(folder).push(hit);
            }
            const fragment = document.createDocumentFragment();
            for (const [owner, folders] of byOwner) {
              const group = element("div", undefined, "group");
              const online = [...folders.values()][0][0].online;
              group.append(element("h3", owner + (online ? "" : " (offline)"), online ? "" : "offline"));
              for (const [folder, files] of folders) {
                const line = element("div", (folder || "(top)") + " ", "folder");
                const all = element("button", "download " + files.length);
                all.addEventListener("click", () => files.forEach((hit) => download(owner, hit.name)));
                line.append(all);
                group.append(line);
                for (const hit of files) {
                  const row = element("div", undefined, "file");
                  const get = element("button", "download");
                  get.addEventListener("click", () => download(owner, hit.name));
                  row.append(get, " ", element("span", hit.name), element("span", hit.description, "description"),
                    element("span", " · " + kindOf(hit.name), "status"));
                  group.append(row);
                }
              }
              fragment.append(group);
            }
            $("search-results").append(fragment);
          } catch (error) { $("search-status").textContent = error.message; }
        });

        // Users and their files
        async function loadUsers() {
          $("users-status").textContent = "…";
          try {
            const users = await api("users");
            $("users-status").textContent = users.length + " online";
            $("users-list").replaceChildren(...users.map((user) => {
              const item = element("li");
              const browse = element("button", "browse");
              browse.addEventListener("click", () => browseUser(user.name));
              item.append(browse, " ", element("span", user.name),
                element("span", " " + user.ip + ":" + user.port, "status"));
              return item;
            }));
          } catch (error) { $("users-status").textContent = error.message; }
        }
        $("users-refresh").addEventListener("click", loadUsers);

        async function browseUser(name) {
          const box = $("browse");
          box.replaceChildren(element("h3", name + "'s files"));
          try {
            const files = await api("users/" + encodeURIComponent(name) + "/files");
            const folders = new Map();
            for (const file of files) {
              const folder = folderOf(file.name);
              if (!folders.has(folder)) folders.set(folder, []);
              folders.get(folder).push(file);
            }
            for (const [folder, list] of [...folders].sort()) {
              const line = element("div", (folder || "(top)") + " ", "folder");
              const all = element("button", "download folder (" + list.length + " here)");
              all.addEventListener("click", () => api("folder-downloads", { owner: name, folder })
                .then(() => show("transfers")).catch((error) => alert("folder " + folder + ": " + error.message)));
              line.append(all);
              box.append(line);
              for (const file of list) {
                const row = element("div", undefined, "file");
                const get = element("button", "download");
                get.addEventListener("click", () => download(name, file.name));
                row.append(get, " ", element("span", file.name), element("span", file.description, "description"));
                box.append(row);
              }
            }
          } catch (error) { box.append(element("p", error.message, "status")); }
        }

        // Transfers, live
        function showTransfers(transfers) {
          $("transfers-rows").replaceChildren(...transfers.slice().reverse().map((t) => {
            const row = element("tr");
            const bar = element("progress");
            bar.max = t.total || 1;
            bar.value = t.total ? t.bytes : 0;
            const progress = element("td");
            progress.append(bar, " " + bytes(t.bytes) + (t.total ? " of " + bytes(t.total) : ""));
            const state = t.state === "queued" ? "queued"
              : t.state === "done" ? (t.direction === "download" && t.verified ? "done, verified" : "done")
              : t.state === "failed" ? "failed: " + t.reason : t.state === "notFound" ? "no such file" : "running";
            row.append(element("td", String(t.id)), element("td", t.direction + " " + t.file),
              element("td", t.peers.join(", ")), progress, element("td", bytes(Math.round(t.bytesPerSecond)) + "/s"),
              element("td", state));
            return row;
          }));
        }

        // Shares
        async function loadShares() {
          try {
            const shares = await api("shares");
            $("shares-list").replaceChildren(...shares.map((share) => {
              const item = element("li", share.path + ": " + share.published + " published" +
                share.skipped.map((s) => ", " + s.count + " skipped (" + s.reason + ")").join(""));
              const remove = element("button", "stop sharing");
              remove.addEventListener("click", () => run("UNSHARE " + share.path).then(loadShares));
              item.append(" ", remove);
              return item;
            }));
          } catch (error) { $("shares-list").replaceChildren(element("li", error.message)); }
        }
        $("share-form").addEventListener("submit", (event) => {
          event.preventDefault();
          run("SHARE " + $("share-path").value).then(loadShares);
        });

        // Wishlist: saved searches, run again every few minutes
        async function loadWishes() {
          try {
            const wishes = await api("wishlist");
            $("wish-list").replaceChildren(...wishes.map((wish) => {
              const item = element("li", '"' + wish.query + '" ' + (wish.fetch ? "fetch" : "watch") + ", " +
                wish.matches.length + " matches, searched " + wish.runs + " times ");
              const forget = element("button", "forget");
              forget.addEventListener("click", () =>
                fetch("/api/v1/wishlist/" + wish.id, { method: "DELETE" }).then(loadWishes));
              item.append(forget);
              const matches = element("ul");
              for (const match of wish.matches.slice(-20).reverse())
                matches.append(element("li", match.owner + " " + match.name + " - " + match.description));
              item.append(matches);
              return item;
            }));
          } catch (error) { $("wish-list").replaceChildren(element("li", error.message)); }
        }
        $("wish-form").addEventListener("submit", (event) => {
          event.preventDefault();
          api("wishlist", { query: $("wish-words").value, fetch: $("wish-fetch").checked })
            .then(loadWishes).catch((error) => alert(error.message));
          $("wish-words").value = "";
        });

        // Console: the shell's output, whoever typed
        let lastLine = 0;
        function appendLog(entries) {
          for (const entry of entries) {
            if (entry.number <= lastLine) continue;
            lastLine = entry.number;
            $("console-lines").append(element("div", entry.text, entry.kind));
          }
        }
        function run(line) {
          return api("commands", { line }).then(appendLog).catch((error) => appendLog([
            { number: lastLine + 0.5, kind: "diagnostic", text: error.message }]));
        }
        $("console-form").addEventListener("submit", (event) => {
          event.preventDefault();
          run($("console-input").value).then(loadSession);
          $("console-input").value = "";
        });

        const events = new EventSource("/api/v1/events");
        events.addEventListener("transfers", (event) => showTransfers(JSON.parse(event.data)));
        events.addEventListener("log", (event) => { appendLog(JSON.parse(event.data)); loadSession(); });
        api("log").then(appendLog).catch(() => {});
        loadSession();
        """
}
