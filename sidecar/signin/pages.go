package signin

import (
	"bytes"
	"html/template"
	"log/slog"
	"net/http"

	"github.com/postern/postern/sidecar/secret"
)

// Outcomes name the pages: the data-outcome attribute of #page, for tests and browsers that drive
// the pages.
const (
	OutcomeLanding           = "landing"            // the landing page with the #signin button
	OutcomeLinkInvalid       = "link-invalid"       // malformed, changed or signed with another key
	OutcomeLinkExpired       = "link-expired"       // past its expiry
	OutcomeLinkUsed          = "link-used"          // a sign-in with it completed already
	OutcomeProjectUnknown    = "project-unknown"    // the project no longer exists
	OutcomeNotEligible       = "not-eligible"       // the project does not sign in through this page
	OutcomeMailboxChanged    = "mailbox-changed"    // the project's mailbox changed since the link was made
	OutcomeUnavailable       = "unavailable"        // the store could not be read
	OutcomeSettings          = "oauth-settings"     // the project's OAuth settings are unusable
	OutcomeStateMismatch     = "state-mismatch"     // the callback belongs to no sign-in started in this browser
	OutcomeFlowExpired       = "flow-expired"       // the callback came too long after the button
	OutcomeProviderError     = "provider-error"     // the provider sent an error to the callback
	OutcomeExchangeFailed    = "exchange-failed"    // the code could not be traded for a token
	OutcomeAccountUnverified = "account-unverified" // the id_token did not verify or names no account
	OutcomeWrongAccount      = "wrong-account"      // someone other than the mailbox signed in
	OutcomeAccountChanged    = "account-changed"    // the mailbox, but another account or tenant than before
	OutcomeNotSaved          = "not-saved"          // the grant could not be written to the store
	OutcomeSignedIn          = "signed-in"          // saved, and the upstream took the token (or was not asked)
	OutcomeUpstreamRefused   = "upstream-refused"   // saved, but the upstream refused the token
)

// page is what every page shows; the template leaves out what is empty.
type page struct {
	Status  int
	Outcome string
	Title   string
	// Facts shown as a list: the project, the mailbox that must sign in, the account that did.
	Project, Mailbox, Account string
	Scopes                    string
	Paragraphs                []string
	// Detail is the provider's or the upstream's own words.
	Detail string
	Advice string
	Form   *form
}

// form is the landing page's button.
type form struct {
	Action, Link, Provider string
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{.Title}} - Postern</title>
<style>
body{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
pre{white-space:pre-wrap;background:#f4f4f4;padding:.6em;border-radius:4px}
button{font-size:1.1em;padding:.5em 1.2em;cursor:pointer}
.signed-in h1,.landing h1{color:#075}h1{color:#a00}
</style></head>
<body><main id="page" class="{{.Outcome}}" data-outcome="{{.Outcome}}">
<h1 id="title">{{.Title}}</h1>
{{if .Project}}<dl id="facts">
<dt>Project</dt><dd id="project">{{.Project}}</dd>
{{if .Mailbox}}<dt>Mailbox</dt><dd id="mailbox">{{.Mailbox}}</dd>{{end}}
{{if .Account}}<dt>Signed in as</dt><dd id="account">{{.Account}}</dd>{{end}}
{{if .Scopes}}<dt>Permissions asked</dt><dd id="scopes">{{.Scopes}}</dd>{{end}}
</dl>{{end}}
{{range .Paragraphs}}<p>{{.}}</p>
{{end}}{{if .Detail}}<pre id="detail">{{.Detail}}</pre>
{{end}}{{if .Advice}}<p id="advice">{{.Advice}}</p>
{{end}}{{with .Form}}<form id="signin-form" method="post" action="{{.Action}}">
<input type="hidden" name="l" value="{{.Link}}">
<button id="signin" name="signin" type="submit">Sign in with {{.Provider}}</button>
</form>
{{end}}</main></body></html>
`))

// render writes pg with headers that keep the page out of caches, frames and Referer headers (the
// landing page's address holds the link).
func render(w http.ResponseWriter, log *slog.Logger, pg *page) {
	pg.Detail = secret.Scrub(pg.Detail) // a provider's or upstream's words, without what looks like a credential
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, pg); err != nil {
		log.Error("rendering a sign-in page", "outcome", pg.Outcome, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	status := pg.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
