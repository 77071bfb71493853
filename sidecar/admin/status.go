package admin

import (
	"crypto/subtle"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// The status page, for hundreds of projects: a summary line (how many ok, degraded, failing,
// waiting for a sign-in), the failing projects first, a filter by name and by state in query
// parameters (q, state) that works without JavaScript, and for each project its last delivery,
// its last error in the upstream's words, the messages of the last hour and day against its
// limits, its token's expiry and its client secret's, and what to do. A project that needs a sign-in gets a button that
// makes a fresh sign-in link (a POST that needs the project API's token).

// summary counts the projects by health.
type summary struct {
	Total, OK, Degraded, Failing, NeedSignIn int
}

// rank orders the rows: failing first, then degraded, then ok.
func rank(p ProjectStatus) int {
	switch p.Health {
	case "failing":
		return 0
	case "degraded":
		return 1
	}
	return 2
}

// matches reports whether p passes the filter: q is a part of its name or of one of its
// senders, state is its health (ok, degraded, failing), its health reason (needs_sign_in, ...)
// or its older state (needs_reauth, disabled, ...).
func matches(p ProjectStatus, q, state string) bool {
	if q != "" {
		q = strings.ToLower(q)
		hit := strings.Contains(strings.ToLower(p.Name), q)
		for _, s := range p.Senders {
			hit = hit || strings.Contains(strings.ToLower(s), q)
		}
		if !hit {
			return false
		}
	}
	return state == "" || state == p.Health || state == p.HealthReason || state == p.State
}

var statusFuncs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := time.Since(t).Round(time.Second)
		switch {
		case d < time.Minute:
			return d.String() + " ago"
		case d < 48*time.Hour:
			return d.Truncate(time.Minute).String() + " ago"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"until": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		if d := time.Until(t).Round(time.Minute); d > 0 {
			return "in " + d.String()
		}
		return "expired " + t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"days":       days,
	"pathEscape": url.PathEscape,
}

// days is a client secret's expiry as the status page shows it: "expires 2026-03-01 (in 41
// days)", or "expired 2026-03-01 (3 days ago)".
func days(t time.Time) string { return project.ExpiryText(t, time.Now()) }

var statusTmpl = template.Must(template.New("status").Funcs(statusFuncs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Postern status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f4f4f4;position:sticky;top:0}
.ok{color:#075}.degraded{color:#a60}.failing{color:#b00;font-weight:bold}
.summary span{margin-right:1.2em}.err{max-width:32em;overflow-wrap:anywhere}small{color:#555}
form.filter{margin:1em 0}form.inline{display:inline}</style></head><body>
<h1>Postern{{with .Version}} <small>{{.}}</small>{{end}}</h1>
<p class="summary" id="summary"><span>{{.Sum.Total}} projects</span> <span class="ok">{{.Sum.OK}} ok</span>
<span class="degraded">{{.Sum.Degraded}} degraded</span> <span class="failing">{{.Sum.Failing}} failing</span>
<span class="failing">{{.Sum.NeedSignIn}} need sign-in</span></p>
<form class="filter" method="get" action="/status">
<label>name or sender <input name="q" value="{{.Q}}"></label>
<label>state <select name="state">{{range .States}}<option value="{{.}}"{{if eq . $.State}} selected{{end}}>{{if .}}{{.}}{{else}}any{{end}}</option>{{end}}</select></label>
<button type="submit">filter</button>{{if or .Q .State}} <a href="/status">show all</a>{{end}}
</form>
{{if or .Q .State}}<p>{{len .Projects}} of {{.Sum.Total}} projects shown.</p>{{end}}
<table><thead><tr><th>project</th><th>health</th><th>last delivery</th><th>last error</th><th>sent (hour / day)</th><th>token / client secret expiry</th><th>what to do</th></tr></thead><tbody>
{{range .Projects}}<tr id="p-{{.Name}}"><td><b>{{.Name}}</b><br><small>{{.Auth}} {{.Upstream}}</small><br><small>{{range $i, $s := .Senders}}{{if $i}}, {{end}}{{$s}}{{end}}</small></td>
<td class="{{.Health}}">{{.Health}}{{with .HealthReason}}<br><small>{{.}}</small>{{end}}{{if ne .Health "ok"}}{{if not .Since.IsZero}}<br><small>since {{ago .Since}}</small>{{end}}{{end}}</td>
<td>{{ago .LastDelivery}}</td>
<td class="err">{{if .LastError}}{{.LastError}}<br><small>{{ago .LastErrorAt}}{{if .Failures}}, {{.Failures}} failed in a row{{end}}</small>{{end}}</td>
<td>{{.SentHour}} / {{.SentDay}}{{if or .PerMinute .PerDay}}<br><small>limits: {{if .PerMinute}}{{.PerMinute}}/min{{end}}{{if and .PerMinute .PerDay}}, {{end}}{{if .PerDay}}{{.PerDay}} recipients/day{{end}}</small>{{end}}</td>
<td>{{until .Expiry}}{{if not .ClientSecretExpires.IsZero}}{{if not .Expiry.IsZero}}<br>{{end}}<small class="secret">client secret {{days .ClientSecretExpires}}</small>{{end}}</td>
<td>{{if ne .State "ok"}}{{.Reason}}{{if .Action}}<br><small>{{.Action}}</small>{{end}}{{end}}
{{if .SignInURL}}<br><a href="{{.SignInURL}}">sign-in link</a>{{end}}
{{if and $.Button (eq .HealthReason "needs_sign_in")}}<form class="inline" method="post" action="/status/sign-in-link/{{pathEscape .Name}}"><button type="submit">make a sign-in link</button></form>{{end}}</td></tr>
{{else}}<tr><td colspan="7">{{if or $.Q $.State}}No project matches.{{else}}No projects yet: add one with <code>postern project add</code>.{{end}}</td></tr>{{end}}
</tbody></table></body></html>
`))

var linkTmpl = template.Must(template.New("link").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in link for {{.Name}}</title></head>
<body style="font-family:system-ui,sans-serif;margin:2em"><h1>Sign-in link for {{.Name}}</h1>
<p>Send this link to the mailbox owner; it works once:</p><p><a id="link" href="{{.URL}}">{{.URL}}</a></p>
<p><a href="/status">back to the status page</a></p></body></html>
`))

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	all := s.list(r.Context())
	q, state := strings.TrimSpace(r.URL.Query().Get("q")), r.URL.Query().Get("state")
	var sum summary
	shown := make([]ProjectStatus, 0, len(all))
	for _, p := range all {
		sum.Total++
		switch p.Health {
		case "failing":
			sum.Failing++
		case "degraded":
			sum.Degraded++
		default:
			sum.OK++
		}
		if p.HealthReason == "needs_sign_in" {
			sum.NeedSignIn++
		}
		if matches(p, q, state) {
			shown = append(shown, p)
		}
	}
	slices.SortStableFunc(shown, func(a, b ProjectStatus) int { return rank(a) - rank(b) })
	page := struct {
		Version  string
		Sum      summary
		Q, State string
		States   []string
		Projects []ProjectStatus
		Button   bool
	}{s.opts.Version, sum, q, state,
		[]string{"", "failing", "degraded", "ok", "needs_sign_in", "credential_refused", "upstream_down", "rate_limited", "disabled", "removed", "client_secret_expiring", "client_secret_expired"},
		shown, s.opts.SignInLink != nil && s.adminToken != [32]byte{}}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusTmpl.Execute(w, page); err != nil {
		s.opts.Logger.Warn("rendering status page", "err", err)
	}
}

// admin admits requests that carry the project API's token and come from no other site (a
// browser's form on another origin is refused, so that a signed-in browser cannot be made to
// post here).
func (s *Server) admin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		sum, ok := presented(r)
		if !ok || s.adminToken == [32]byte{} || subtle.ConstantTimeCompare(sum[:], s.adminToken[:]) != 1 {
			w.Header().Add("WWW-Authenticate", `Basic realm="postern admin", charset="UTF-8"`)
			writeError(w, http.StatusUnauthorized, "this needs the project API's token (api.token_file): as a bearer token, or in a browser as the password")
			return
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
			writeError(w, http.StatusForbidden, "refused a request from another site")
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			if u, err := url.Parse(o); err != nil || u.Host != r.Host {
				writeError(w, http.StatusForbidden, "refused a request from another origin")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) signInLink(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.opts.SignInLink == nil {
		writeError(w, http.StatusNotFound, "the sign-in pages are off: set signin.public_url (or listen.admin) and restart Postern")
		return
	}
	link, err := s.opts.SignInLink(r.Context(), name)
	if err != nil {
		writeError(w, http.StatusBadRequest, secret.Scrub(err.Error()))
		return
	}
	s.opts.Logger.Info("admin: made a sign-in link", "project", name, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = linkTmpl.Execute(w, struct{ Name, URL string }{name, link})
}
