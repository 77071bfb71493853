// Package signin owns the sign-in of an OAuth project's mailbox by its owner: signed, expiring,
// single-use links, the pages they open on Postern's admin listener, and the checks between the
// identity provider's answer and a saved grant.
//
// One sign-in, from the administrator's command to mail flowing:
//
//  1. `postern authorize-link PROJECT` makes a link (Links.New): the project, its mailbox, an
//     expiry and a random nonce, signed with HMAC-SHA256 under the key in signin.key_file. The
//     administrator sends it to the mailbox owner.
//  2. GET /signin?l=LINK checks the signature, the expiry, that the project still signs in with
//     the authorization code grant as that mailbox, and that the link is unused (its nonce is
//     neither in this process's memory nor among the used links of the project's token record),
//     and shows which project and mailbox are to be signed in, with a button. Opening the page changes nothing, so link
//     scanners in mail systems cannot use the link up.
//  3. The button (POST /signin) checks the link again, and sends the browser to the provider's
//     sign-in page: authorization code with PKCE S256, a random state, a random OpenID nonce and
//     login_hint=<mailbox>. The state, the PKCE verifier, the OpenID nonce, the project and the
//     link's nonce travel in a cookie sealed with
//     XChaCha20-Poly1305 under a key derived from the same key file, valid for FlowTTL (15
//     minutes): no server-side state, so any replica sharing the key file can serve the callback.
//  4. GET /signin/callback finds the cookie of the returned state (a state without one is refused),
//     deletes it, shows a provider's error as such, trades the code for tokens, verifies the
//     id_token (with the OpenID nonce of this sign-in) and compares its account with the project's mailbox and the previous sign-in
//     (oauth.CheckAccount: the mailbox case-insensitively, then the same tenant and account id).
//     Another account is refused, naming both, and nothing is stored.
//  5. The grant is saved through Grants (the token broker, which clears needs_reauth) together
//     with the link's nonce, in one check-and-set write that fails when the record lists the
//     nonce already: of two callbacks of one link, on any replicas, one stores its grant and the
//     other shows that the link was used. The nonce stays in the record until the link expires,
//     and in memory, so the link is dead everywhere, after restarts too. TestAuth then signs in
//     upstream without sending mail. The page shows the result: signed in, or the
//     upstream's refusal with what to do about it (Advice).
//
// Pages are plain HTML without scripts; each carries #page with a data-outcome naming it (the
// Outcome constants) and stable ids for what it shows, for tests and headless browsers.
package signin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

// Projects reads one project: store.Admin, so that a project changed a moment ago is seen as it is.
type Projects interface {
	Project(ctx context.Context, name string) (project.Project, error)
}

// Grants saves a completed sign-in: *token.Broker. Store records the link's nonce in the same
// check-and-set write as the grant, and answers token.ErrLinkUsed when the record lists it.
type Grants interface {
	Store(ctx context.Context, p project.Project, tok *oauth2.Token, in token.SignIn) error
}

// Options configures a Server. Key, PublicURL, Projects, Tokens and Grants are required; every
// other zero value is a safe default.
type Options struct {
	// Key checks the links and seals the sign-in cookie: LoadKey(signin.key_file).
	Key []byte
	// PublicURL is the admin listener as the mailbox owner's browser reaches it
	// (config.Config.SignInURL). PublicURL + "/signin/callback" is the redirect URI to register at
	// the identity provider.
	PublicURL string
	// Projects reads the project a link names.
	Projects Projects
	// Tokens reads token records: the used links, and the account of the previous sign-in.
	Tokens store.Tokens
	// Grants saves the signed-in grant.
	Grants Grants
	// TestAuth, when set, signs in to the project's upstream without sending mail once the grant is
	// saved (UpstreamCheck); its error is shown with advice.
	TestAuth func(ctx context.Context, p project.Project) error
	// HTTPClient makes the requests to identity providers; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Logger receives sign-ins and refusals (never a token, code, state or link). Nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// FlowTTL bounds the time from the button to the callback; zero means 15 minutes.
	FlowTTL time.Duration
	// Timeout bounds the callback's work with the provider and the store, and separately the
	// upstream test; zero means one minute.
	Timeout time.Duration
}

// DefaultFlowTTL is how long a started sign-in waits for the provider's answer.
const DefaultFlowTTL = 15 * time.Minute

// Server serves the sign-in pages. It is safe for concurrent use.
type Server struct {
	opts       Options
	log        *slog.Logger
	links      *Links
	sealer     *sealer
	secure     bool   // the cookie only goes over https
	cookiePath string // the callback's path as the browser sees it
	redirect   string

	mu   sync.Mutex
	used map[string]time.Time // nonces of links used in this process → the link's expiry
}

// New returns a Server, or every problem with opts at once.
func New(opts Options) (*Server, error) {
	var errs []error
	if opts.Projects == nil {
		errs = append(errs, errors.New("signin: Projects is required"))
	}
	if opts.Tokens == nil {
		errs = append(errs, errors.New("signin: Tokens is required"))
	}
	if opts.Grants == nil {
		errs = append(errs, errors.New("signin: Grants is required"))
	}
	links, err := NewLinks(opts.Key, opts.PublicURL)
	if err != nil {
		errs = append(errs, fmt.Errorf("signin: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FlowTTL <= 0 {
		opts.FlowTTL = DefaultFlowTTL
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	base, _ := url.Parse(links.Base())
	return &Server{
		opts:       opts,
		log:        opts.Logger,
		links:      links,
		sealer:     newSealer(opts.Key),
		secure:     base.Scheme == "https",
		cookiePath: strings.TrimRight(base.Path, "/") + "/signin/callback",
		redirect:   links.Base() + "/signin/callback",
		used:       make(map[string]time.Time),
	}, nil
}

// Routes are the sign-in pages, for admin.Options.Extra.
func (s *Server) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /signin":          http.HandlerFunc(s.landing),
		"POST /signin":         http.HandlerFunc(s.start),
		"GET /signin/callback": http.HandlerFunc(s.callback),
	}
}

// Handler serves Routes alone.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for pattern, h := range s.Routes() {
		mux.Handle(pattern, h)
	}
	return mux
}

// RedirectURL is the redirect URI to register at the identity provider.
func (s *Server) RedirectURL() string { return s.redirect }

// Link makes a sign-in link for p, valid for ttl: for a status page that offers one.
func (s *Server) Link(p project.Project, ttl time.Duration) (string, error) {
	u, _, err := s.links.New(p, ttl, s.opts.Now())
	return u, err
}

// Eligible reports whether p's mailbox signs in through a link, and if not, what to do instead.
func Eligible(p project.Project) error {
	o := p.Auth.OAuth
	switch {
	case p.Auth.Type != project.AuthOAuth2 || o == nil:
		return fmt.Errorf("project %s signs in with %s, not OAuth: switch it with 'postern project update %s --auth oauth2 ...'", p.Name, p.Auth.Type, p.Name)
	case o.Grant == oauth.GrantClientCredentials:
		return fmt.Errorf("project %s uses the client_credentials grant: no person signs in; 'postern authorize %s' checks the app registration", p.Name, p.Name)
	case o.Grant == oauth.GrantDeviceCode:
		return fmt.Errorf("project %s uses the device_code grant: sign the mailbox in from a terminal with 'postern authorize --device %s'", p.Name, p.Name)
	case p.Auth.Username == "":
		return fmt.Errorf("project %s names no mailbox (auth.username)", p.Name)
	}
	return nil
}

// checked is a link that passed every check, with its project.
type checked struct {
	signed string
	link   Link
	p      project.Project
}

// check runs the checks of step 2 of the package comment. A non-nil page says why the link
// cannot be used.
func (s *Server) check(ctx context.Context, signed string) (checked, *page) {
	link, err := s.links.Verify(signed, s.opts.Now())
	switch {
	case signed == "" || errors.Is(err, ErrLinkInvalid):
		return checked{}, &page{Status: http.StatusBadRequest, Outcome: OutcomeLinkInvalid, Title: "This sign-in link is not valid",
			Paragraphs: []string{"The link is incomplete or was changed. Copy the whole link from the message you were sent, or ask your Postern administrator for a new one."}}
	case errors.Is(err, ErrLinkExpired):
		return checked{}, &page{Status: http.StatusGone, Outcome: OutcomeLinkExpired, Title: "This sign-in link has expired",
			Project: link.Project, Mailbox: link.Mailbox,
			Paragraphs: []string{fmt.Sprintf("The link worked until %s. Ask your Postern administrator for a new one (postern authorize-link %s).", when(link.Expiry), link.Project)}}
	}
	p, pg := s.checkLink(ctx, link)
	return checked{signed: signed, link: link, p: p}, pg
}

// checkLink checks that the link's project still signs in as the link's mailbox and that the link
// is unused, and returns the project.
func (s *Server) checkLink(ctx context.Context, link Link) (project.Project, *page) {
	used := usedPage(link)
	if s.usedHere(link.Nonce) {
		return project.Project{}, used
	}
	p, err := s.opts.Projects.Project(ctx, link.Project)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return p, &page{Status: http.StatusNotFound, Outcome: OutcomeProjectUnknown, Title: "This project no longer exists",
			Project: link.Project, Paragraphs: []string{"Postern has no project of this name any more. Ask your Postern administrator."}}
	case err != nil:
		s.log.Warn("sign-in: reading the project failed", "project", link.Project, "err", err)
		return p, unavailable(link)
	}
	if err := Eligible(p); err != nil {
		return p, &page{Status: http.StatusConflict, Outcome: OutcomeNotEligible, Title: "This project does not sign in here",
			Project: p.Name, Paragraphs: []string{"The project's settings changed since the link was made. Tell your Postern administrator:"}, Detail: err.Error()}
	}
	if !strings.EqualFold(p.Auth.Username, link.Mailbox) {
		return p, &page{Status: http.StatusGone, Outcome: OutcomeMailboxChanged, Title: "The project's mailbox has changed",
			Project: p.Name, Mailbox: p.Auth.Username,
			Paragraphs: []string{fmt.Sprintf("This link was made for %s, and the project now sends as %s. Ask your Postern administrator for a new link.", link.Mailbox, p.Auth.Username)}}
	}
	rec, err := s.opts.Tokens.Token(ctx, p.Name)
	switch {
	case err == nil && rec.SignInUsed(link.Nonce):
		return p, used
	case err != nil && !errors.Is(err, store.ErrNotFound):
		s.log.Warn("sign-in: reading the token record failed", "project", p.Name, "err", err)
		return p, unavailable(link)
	}
	return p, nil
}

func usedPage(link Link) *page {
	return &page{Status: http.StatusGone, Outcome: OutcomeLinkUsed, Title: "This sign-in link was used already",
		Project: link.Project, Mailbox: link.Mailbox,
		Paragraphs: []string{
			"A sign-in with this link was completed, and each link works once. If the mailbox is signed in, there is nothing more to do.",
			fmt.Sprintf("To sign in again, ask your Postern administrator for a new link (postern authorize-link %s).", link.Project),
		}}
}

func unavailable(link Link) *page {
	return &page{Status: http.StatusServiceUnavailable, Outcome: OutcomeUnavailable, Title: "Postern cannot check this link right now",
		Project: link.Project, Paragraphs: []string{"Postern cannot read its records at the moment. Try the link again in a few minutes."}}
}

// when formats a time for the pages.
func when(t time.Time) string { return t.UTC().Format("2 January 2006, 15:04 UTC") }

// providerName is the provider as the pages name it.
func providerName(o *project.OAuth) string {
	switch o.Provider {
	case oauth.Microsoft:
		return "Microsoft"
	case oauth.Google:
		return "Google"
	}
	return "your organisation's identity provider"
}

func (s *Server) provider(p project.Project) (*oauth.Provider, *page) {
	prov, err := oauth.NewProvider(p.Auth.OAuth, oauth.Options{RedirectURL: s.redirect, HTTPClient: s.opts.HTTPClient, Now: s.opts.Now})
	if err != nil {
		s.log.Error("sign-in: the project's OAuth settings are unusable", "project", p.Name, "err", err)
		return nil, &page{Status: http.StatusInternalServerError, Outcome: OutcomeSettings, Title: "This project's OAuth settings are unusable",
			Project: p.Name, Paragraphs: []string{"Tell your Postern administrator:"}, Detail: err.Error()}
	}
	return prov, nil
}

// landing is GET /signin: step 2.
func (s *Server) landing(w http.ResponseWriter, r *http.Request) {
	c, pg := s.check(r.Context(), r.URL.Query().Get("l"))
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	prov, pg := s.provider(c.p)
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	name := providerName(c.p.Auth.OAuth)
	render(w, s.log, &page{
		Outcome: OutcomeLanding, Title: "Sign in the mailbox " + c.p.Auth.Username,
		Project: c.p.Name, Mailbox: c.p.Auth.Username, Scopes: strings.Join(prov.Config.Scopes, " "),
		Paragraphs: []string{
			fmt.Sprintf("Postern sends the mail of project %s as %s, through your organisation's own mail server, and needs your permission to do so, once. "+
				"The button takes you to the sign-in page of %s: sign in as %s and allow access. "+
				"Postern then keeps a token that lets it send mail as this mailbox and renews it by itself; it never sees your password, "+
				"and you can withdraw the access at any time in your account's app permissions.", c.p.Name, c.p.Auth.Username, name, c.p.Auth.Username),
			fmt.Sprintf("This link works once, until %s.", when(c.link.Expiry)),
		},
		Form: &form{Action: s.links.Base() + "/signin", Link: c.signed, Provider: name},
	})
}

// maxForm bounds the body of POST /signin.
const maxForm = 8 << 10

// start is POST /signin: step 3.
func (s *Server) start(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		render(w, s.log, &page{Status: http.StatusBadRequest, Outcome: OutcomeLinkInvalid, Title: "This sign-in link is not valid",
			Paragraphs: []string{"Open the link you were sent again and press the button."}})
		return
	}
	c, pg := s.check(r.Context(), r.PostForm.Get("l"))
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	prov, pg := s.provider(c.p)
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	now := s.opts.Now()
	f := flow{
		State: oauth.NewState(), Verifier: oauth.NewVerifier(), IDNonce: oauth.NewState(),
		Project: c.p.Name, Mailbox: c.p.Auth.Username, Nonce: c.link.Nonce,
		LinkExpiry: c.link.Expiry.Unix(), Expiry: now.Add(s.opts.FlowTTL).Unix(),
	}
	name, value := s.sealer.seal(f)
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: s.cookiePath, MaxAge: int(s.opts.FlowTTL / time.Second),
		HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode,
	})
	s.log.Info("sign-in started: sending the browser to the identity provider", "project", c.p.Name, "mailbox", c.p.Auth.Username)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, prov.AuthCodeURL(f.State, f.Verifier, oauth.LoginHint(c.p.Auth.Username), oauth.NonceParam(f.IDNonce)), http.StatusSeeOther)
}

// callback is GET /signin/callback: steps 4 and 5.
func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := q.Get("state")
	f, err := s.flow(r, state)
	if err != nil {
		pg := &page{Status: http.StatusBadRequest, Outcome: OutcomeStateMismatch, Title: "This sign-in was not started here",
			Paragraphs: []string{
				"The identity provider's answer does not belong to a sign-in started in this browser (the state does not match), so Postern ignores it and nothing was saved.",
				"Open the sign-in link you were sent again, in the browser you use now, and press the button.",
			}}
		if errors.Is(err, errFlowExpired) {
			pg.Outcome, pg.Title = OutcomeFlowExpired, "This sign-in took too long"
			pg.Paragraphs = []string{fmt.Sprintf("More than %v passed between pressing the button and the identity provider's answer. Nothing was saved. Open the sign-in link again and press the button.", s.opts.FlowTTL)}
		}
		render(w, s.log, pg)
		return
	}
	// The flow is finished, whatever happens next: its code cannot be replayed through this cookie.
	http.SetCookie(w, &http.Cookie{Name: cookieName(state), Value: "", Path: s.cookiePath, MaxAge: -1,
		HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode})

	facts := page{Project: f.Project, Mailbox: f.Mailbox}
	if code := q.Get("error"); code != "" || q.Get("code") == "" {
		pg := facts
		desc := strings.TrimSpace(q.Get("error_description"))
		pg.Status, pg.Outcome = http.StatusBadRequest, OutcomeProviderError
		pg.Title, pg.Advice = providerAnswer(q.Get("error"), desc)
		if code == "" {
			code = "no authorization code in the answer"
		}
		pg.Detail = code
		if desc != "" {
			pg.Detail += ": " + desc
		}
		pg.Paragraphs = []string{"Nothing was saved. The identity provider said:"}
		s.log.Warn("sign-in: the identity provider answered with an error", "project", f.Project, "err", q.Get("error"))
		render(w, s.log, &pg)
		return
	}

	// The work below must not stop half-way because the browser went away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.opts.Timeout)
	defer cancel()
	link := Link{Project: f.Project, Mailbox: f.Mailbox, Expiry: time.Unix(f.LinkExpiry, 0), Nonce: f.Nonce}
	p, pg := s.checkLink(ctx, link)
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	prov, pg := s.provider(p)
	if pg != nil {
		render(w, s.log, pg)
		return
	}
	tok, err := prov.Exchange(ctx, q.Get("code"), f.Verifier)
	if err != nil {
		s.log.Warn("sign-in: exchanging the authorization code failed", "project", p.Name, "err", oauth.Reason(err))
		pg := facts
		pg.Status, pg.Outcome, pg.Title = http.StatusBadGateway, OutcomeExchangeFailed, "The sign-in could not be completed"
		pg.Paragraphs = []string{"The identity provider did not give Postern a token for the sign-in. Nothing was saved. Open the sign-in link again and press the button; if this persists, tell your Postern administrator:"}
		pg.Detail = oauth.Reason(err)
		render(w, s.log, &pg)
		return
	}
	id, err := prov.Identity(ctx, tok, oauth.WithNonce(f.IDNonce))
	if err != nil {
		s.log.Warn("sign-in: the id_token did not verify", "project", p.Name, "err", err)
		pg := facts
		pg.Status, pg.Outcome, pg.Title = http.StatusBadGateway, OutcomeAccountUnverified, "Postern could not tell which account signed in"
		pg.Paragraphs = []string{"The identity provider's answer did not name the signed-in account in a form Postern could verify, so nothing was saved. Tell your Postern administrator (the project's scopes must include openid and email):"}
		pg.Detail = err.Error()
		render(w, s.log, &pg)
		return
	}
	account := id.Mailbox
	prev, err := s.opts.Tokens.Token(ctx, p.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("sign-in: reading the token record failed", "project", p.Name, "err", err)
		render(w, s.log, unavailable(link))
		return
	}
	if err := oauth.CheckAccount(id, p.Auth.Username, prev); err != nil {
		render(w, s.log, s.otherAccount(facts, p, err))
		return
	}
	in := token.SignIn{Account: account, AccountID: id.ID, TenantID: id.TenantID, Nonce: link.Nonce, LinkExpiry: link.Expiry}
	if err := s.opts.Grants.Store(ctx, p, tok, in); err != nil {
		if errors.Is(err, token.ErrLinkUsed) {
			s.remember(link)
			render(w, s.log, usedPage(link))
			return
		}
		s.log.Error("sign-in: saving the grant failed", "project", p.Name, "account", account, "err", err)
		s.remember(link) // the grant waits in memory with the nonce, and is written when it can be
		pg := facts
		pg.Account = account
		pg.Status, pg.Outcome, pg.Title = http.StatusServiceUnavailable, OutcomeNotSaved, "The sign-in could not be saved"
		pg.Paragraphs = []string{"You signed in correctly, but Postern could not write the sign-in to its store. This Postern keeps it and keeps trying; if the problem lasts, tell your Postern administrator, who can send you a new link."}
		pg.Detail = err.Error()
		render(w, s.log, &pg)
		return
	}
	s.remember(link)
	s.log.Info("sign-in completed: the grant is saved", "project", p.Name, "account", account)

	pg = &facts
	pg.Account = account
	pg.Outcome, pg.Title = OutcomeSignedIn, "The mailbox is signed in"
	pg.Paragraphs = []string{fmt.Sprintf("Postern saved the sign-in of %s. Mail of project %s flows from now on, including mail that waited; you can close this page.", account, p.Name)}
	if s.opts.TestAuth != nil {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.opts.Timeout)
		defer cancel()
		if err := s.opts.TestAuth(tctx, p); err != nil {
			s.log.Warn("sign-in saved, but the upstream refused the token", "project", p.Name, "err", err)
			pg.Outcome, pg.Title = OutcomeUpstreamRefused, "Signed in, but the mail server refused the sign-in"
			pg.Paragraphs = []string{
				fmt.Sprintf("Postern saved the sign-in of %s, then tried to sign in to the mail server with it (without sending mail), and the server refused. Mail of project %s waits until this is fixed; nothing is lost.", account, p.Name),
				"The mail server said:",
			}
			pg.Detail = err.Error()
			pg.Advice = advice.Next(p, err)
		} else {
			pg.Paragraphs[0] = fmt.Sprintf("Postern saved the sign-in of %s and signed in to the mail server with it (no mail was sent). Mail of project %s flows from now on, including mail that waited; you can close this page.", account, p.Name)
		}
	}
	render(w, s.log, pg)
}

// flow returns the sign-in started in this browser for state.
func (s *Server) flow(r *http.Request, state string) (flow, error) {
	if state == "" {
		return flow{}, errNoFlow
	}
	c, err := r.Cookie(cookieName(state))
	if err != nil {
		return flow{}, errNoFlow
	}
	return s.sealer.open(state, c.Value, s.opts.Now())
}

// cancelRE matches the descriptions identity providers give access_denied when the person
// cancelled or declined (oidc-provider: "End-User aborted interaction"; Microsoft: AADSTS65004
// "User declined to consent"; Keycloak, Okta and others: "... denied/cancelled ... by the user").
var cancelRE = regexp.MustCompile(`(?i)abort|cancel|declin|AADSTS65004|(denied|rejected)( the request| access)? by (the )?(end-)?user|user (denied|rejected)|did not consent`)

// providerAnswer titles the page for an error the identity provider sent to the callback, and
// explains it. A person who cancelled is told so; anything else is the provider's refusal, which
// the person could not have avoided, and says so.
func providerAnswer(code, desc string) (title, advice string) {
	switch {
	case code == "access_denied" && cancelRE.MatchString(desc):
		return "The sign-in was cancelled", "The sign-in was cancelled or the access declined at the identity provider. To send mail as this mailbox, Postern needs the access allowed: open the link again and allow it."
	case code == "access_denied" && desc == "":
		return "The identity provider did not sign the mailbox in", providerAdvice(code)
	case code == "access_denied":
		return "The identity provider refused the sign-in", "The identity provider refused the access for the reason above; you did nothing wrong. Tell your Postern administrator: the app registration or the project's OAuth settings (such as its scopes) may need to change, or an administrator may have to approve the app."
	case code == "":
		return "The identity provider did not sign the mailbox in", ""
	}
	return "The identity provider refused the sign-in", providerAdvice(code)
}

// providerAdvice explains the RFC 6749 error codes a person meets at the callback.
func providerAdvice(code string) string {
	switch code {
	case "access_denied":
		return "The sign-in was cancelled, or access was declined. To send mail as this mailbox, Postern needs the access allowed: open the link again. If your organisation requires an administrator to approve apps, ask them to grant consent first."
	case "consent_required", "interaction_required", "login_required":
		return "The identity provider needs more from you or an administrator (consent, or multi-factor sign-in). Open the link again; if the same answer comes back, an administrator must grant consent for the app."
	case "invalid_scope", "unauthorized_client", "invalid_client", "invalid_request", "unsupported_response_type":
		return "The app registration or the project's OAuth settings are wrong: tell your Postern administrator what the identity provider said."
	case "temporarily_unavailable", "server_error":
		return "The identity provider had a problem: try the link again in a few minutes."
	}
	return ""
}

// usedHere reports whether a sign-in with the link of nonce completed in this process.
func (s *Server) usedHere(nonce string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.used[nonce]
	return ok
}

// remember records in memory that the link's sign-in completed, so that this process refuses the
// link even before the store has the nonce; the store's record is what other replicas and later
// processes read.
func (s *Server) remember(link Link) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, exp := range s.used {
		if !now.Before(exp) {
			delete(s.used, n)
		}
	}
	s.used[link.Nonce] = link.Expiry
}

// otherAccount is the page of an account that oauth.CheckAccount refused.
func (s *Server) otherAccount(facts page, p project.Project, err error) *page {
	var ae *oauth.AccountError
	if !errors.As(err, &ae) {
		ae = &oauth.AccountError{Kind: oauth.OtherMailbox, Mailbox: p.Auth.Username}
	}
	account := ae.Got.Mailbox
	s.log.Warn("sign-in refused: another account signed in", "project", p.Name, "mailbox", p.Auth.Username, "account", account, "why", ae.Kind)
	pg := facts
	pg.Account = account
	pg.Status = http.StatusForbidden
	if ae.Kind == oauth.OtherMailbox {
		pg.Outcome, pg.Title = OutcomeWrongAccount, "Signed in as the wrong account"
		pg.Paragraphs = []string{
			fmt.Sprintf("You signed in as %s, but project %s sends as %s. Nothing was saved.", account, p.Name, p.Auth.Username),
			fmt.Sprintf("Open the sign-in link again and sign in as %s. If the sign-in page picks %s by itself, sign out of it first, or use a private browser window.", p.Auth.Username, account),
			"(A token of another account is the classic cause of the mail server's \"535 5.7.3 Authentication unsuccessful\".)",
		}
		return &pg
	}
	what := "another organisation (tenant)"
	if ae.Kind == oauth.OtherAccount {
		what = "another account"
	}
	pg.Outcome, pg.Title = OutcomeAccountChanged, "Signed in as a different account than before"
	pg.Paragraphs = []string{
		fmt.Sprintf("You signed in as %s, but from %s than the sign-in Postern holds for this mailbox. Nothing was saved.", account, what),
		fmt.Sprintf("If you used the wrong account, sign out at the identity provider, open the link again and sign in with the account used before. "+
			"If the mailbox's account was replaced on purpose, your Postern administrator must first remove the old sign-in (postern authorize --forget %s), then send a new link.", p.Name),
	}
	pg.Detail = ae.Error()
	return &pg
}
