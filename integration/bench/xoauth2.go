package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/integration/bench/sink"
	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/cli"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// PathXOAUTH2 is path A with XOAUTH2: Postern signs in with access tokens from a real OAuth 2.0
// server (oidc-provider), refreshed every few seconds.
const PathXOAUTH2 = "postern-xoauth2"

const (
	senderXOAUTH2  = "bench-x@postern.test"
	projectXOAUTH2 = "bench-x"
	// tokenMinValidity is the least remaining life of a token the broker hands out without
	// waiting for a refresh (token's minValidity), or half the margin when that is shorter.
	tokenMinValidity = time.Minute
)

// XOAUTH2Options configure StartXOAUTH2.
type XOAUTH2Options struct {
	// FreshFor is how long an access token is fresh: the IdP issues tokens living 2 × FreshFor.
	// The broker refreshes at most half a token's life before it expires (tokens.refresh_margin
	// is longer), so Postern refreshes about every FreshFor, in the background, and the token
	// stays usable for FreshFor/2 more while the refresh runs.
	FreshFor time.Duration
	// MaxConcurrency is the project's connection limit.
	MaxConcurrency int
}

// XOAUTH2 is the OAuth part of the setup: the IdP, the XOAUTH2 sink validating tokens at the
// IdP's introspection endpoint, and Postern's OAuth project with a signed-in grant.
type XOAUTH2 struct {
	IdP   *harness.IdP
	Sink  *sink.Sink
	intro *introspector
	seed  time.Time // expiry of the token written at sign-in
}

// StartXOAUTH2 starts the IdP and the XOAUTH2 sink, signs the mailbox in, adds the OAuth project
// to Postern and writes the grant to Postern's store, as the sign-in callback does.
func (rl *Relay) StartXOAUTH2(r harness.T, opts XOAUTH2Options) *XOAUTH2 {
	r.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := harness.IdPClient{ID: "postern-bench", Secret: secret.New(harness.NewID()), RedirectURIs: []string{harness.IdPDefaultRedirectURI}}
	account := harness.IdPAccount{Login: senderXOAUTH2, Password: secret.New(harness.NewID())}
	idp := harness.StartIdP(r, harness.IdPOptions{
		Clients: []harness.IdPClient{client}, Accounts: []harness.IdPAccount{account},
		AccessTTL: 2 * opts.FreshFor,
	})
	x := &XOAUTH2{IdP: idp, intro: &introspector{
		url: idp.IntrospectionURL, id: idp.IntrospectionClient.ID, secret: idp.IntrospectionClient.Secret,
		cache: map[string]time.Time{},
	}}
	var err error
	x.Sink, err = sink.Start(sink.Options{TLS: rl.TLSConfig, Token: x.intro.check})
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { x.Sink.Close() })
	rl.XOAuth = x.Sink

	if _, err := rl.Postern.CLI(ctx, client.Secret.Reveal()+"\n", "project", "add",
		"--sender", senderXOAUTH2, "--host", "127.0.0.1", "--port", strconv.Itoa(x.Sink.Port()),
		"--tls", "starttls", "--ca-file", rl.CA.CAFile, "--max-connections", strconv.Itoa(opts.MaxConcurrency),
		"--auth", "oauth2", "--provider", "generic", "--client-id", client.ID, "--client-secret-stdin",
		"--auth-url", idp.AuthorizeURL, "--token-url", idp.TokenURL, "--scopes", harness.IdPScopes,
		"--username", senderXOAUTH2, projectXOAUTH2); err != nil {
		r.Fatalf("%v", err)
	}
	tok, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: account.Login, Password: account.Password})
	if err != nil {
		r.Fatalf("signing %s in at the IdP: %v", account.Login, err)
	}
	// The grant goes into Postern's store (file or Vault) as its sign-in pages would write it.
	b, err := os.ReadFile(rl.Postern.Config)
	if err != nil {
		r.Fatalf("%v", err)
	}
	cfg, err := config.Parse(b)
	if err != nil {
		r.Fatalf("reading %s: %v", rl.Postern.Config, err)
	}
	st, err := cli.OpenStore(ctx, cfg)
	if err != nil {
		r.Fatalf("%v", err)
	}
	defer st.Close()
	x.seed = tok.Expiry
	if _, err := st.PutToken(ctx, projectXOAUTH2, project.Token{
		AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry,
		RefreshToken: tok.RefreshToken, Account: senderXOAUTH2, State: project.TokenOK,
		RefreshedBy: "bench", UpdatedAt: time.Now(),
	}); err != nil {
		r.Fatalf("writing the grant of %s: %v", projectXOAUTH2, err)
	}
	if err := rl.Postern.WaitRouted(ctx, senderXOAUTH2, true); err != nil {
		r.Fatalf("%v", err)
	}
	return x
}

// XOAUTH2Result is what the XOAUTH2 path did.
type XOAUTH2Result struct {
	Cells []Cell `json:"cells"`
	// TokenLifetimeSeconds is the access tokens' lifetime; Postern refreshes them
	// RefreshMarginSeconds before expiry.
	TokenLifetimeSeconds float64 `json:"token_lifetime_seconds"`
	RefreshMarginSeconds float64 `json:"refresh_margin_seconds"`
	// Refreshes are the token refreshes Postern logged during the measured cells.
	Refreshes int `json:"refreshes"`
	// RefreshWaits are deliveries that waited for a refresh: Postern's
	// postern_token_refresh_waits_total over the measured cells.
	RefreshWaits int `json:"refresh_waits"`
	// RefreshWaitsDerived cross-checks it from Postern's refresh log (a refresh that completed
	// when the token it replaced had less than a minute left) plus the sink's XOAUTH2 refusals.
	RefreshWaitsDerived int `json:"refresh_waits_derived"`
	// TokensSeen is the number of distinct access tokens the sink validated (at the IdP's
	// introspection endpoint, cached until the token's exp).
	TokensSeen    int   `json:"tokens_seen"`
	Introspection int64 `json:"introspections"`
	SinkAuths     int64 `json:"sink_auths"`
	AuthFailures  int64 `json:"sink_auth_failures"`
}

// MeasureXOAUTH2 measures path A with XOAUTH2 at each concurrency and counts the token refreshes
// and the deliveries that waited for one.
func (rl *Relay) MeasureXOAUTH2(ctx context.Context, x *XOAUTH2, size int, steps []int, count int) (XOAUTH2Result, error) {
	res := XOAUTH2Result{
		TokenLifetimeSeconds: x.IdP.AccessTTL.Seconds(),
		RefreshMarginSeconds: x.IdP.AccessTTL.Seconds() / 2,
	}
	before := x.Sink.Counts()
	logFrom := len(rl.Postern.Log())
	waitsBefore, err := refreshWaits(ctx, rl)
	if err != nil {
		return res, err
	}
	for _, conc := range steps {
		c, err := rl.Measure(ctx, PathXOAUTH2, size, conc, count, 1)
		if err != nil {
			return res, err
		}
		res.Cells = append(res.Cells, c)
	}
	after := x.Sink.Counts()
	res.SinkAuths, res.AuthFailures = after.Auths-before.Auths, after.AuthFailures-before.AuthFailures
	refreshes, late, err := refreshTimings(rl.Postern.Log()[logFrom:], x.lastExpiry(rl.Postern.Log()[:logFrom]), min(tokenMinValidity, x.IdP.AccessTTL/4))
	if err != nil {
		return res, err
	}
	res.Refreshes, res.RefreshWaitsDerived = refreshes, late+int(res.AuthFailures)
	waitsAfter, err := refreshWaits(ctx, rl)
	if err != nil {
		return res, err
	}
	res.RefreshWaits = int(waitsAfter - waitsBefore)
	res.TokensSeen, res.Introspection = x.intro.stats()
	return res, nil
}

// lastExpiry is the expiry of the token Postern held at the end of log: the last refresh's, or
// the signed-in one's.
func (x *XOAUTH2) lastExpiry(log string) time.Time {
	exp := x.seed
	_ = scanRefreshes(log, func(_, e time.Time) { exp = e })
	return exp
}

// refreshTimings counts the refreshes in log and those that completed when the token they
// replaced (expiring at prev) had less than minValidity left: no longer handed out, so a delivery
// had to wait.
func refreshTimings(log string, prev time.Time, minValidity time.Duration) (refreshes, late int, err error) {
	err = scanRefreshes(log, func(at, expiry time.Time) {
		refreshes++
		if at.Add(minValidity).After(prev) {
			late++
		}
		prev = expiry
	})
	return refreshes, late, err
}

// scanRefreshes calls f with the time and the new expiry of every "refreshed the access token"
// line of Postern's text log.
func scanRefreshes(log string, f func(at, expiry time.Time)) error {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, `msg="refreshed the access token"`) || !strings.Contains(l, "project="+projectXOAUTH2) {
			continue
		}
		at, err1 := time.Parse(time.RFC3339Nano, logField(l, "time"))
		exp, err2 := time.Parse(time.RFC3339Nano, logField(l, "expiry"))
		if err1 != nil || err2 != nil {
			return fmt.Errorf("reading the refresh log line %q: %v %v", l, err1, err2)
		}
		f(at, exp)
	}
	return sc.Err()
}

// logField returns the unquoted value of key=value in a slog text line.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(line, key+"=") {
			return ""
		}
		i = -1
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}

// introspector validates access tokens at the IdP's introspection endpoint (RFC 7662), as a
// resource server does, and caches each valid token until its exp.
type introspector struct {
	url, id string
	secret  secret.Secret
	calls   atomic.Int64

	mu    sync.Mutex
	cache map[string]time.Time
}

func (i *introspector) check(user, token string) bool {
	i.mu.Lock()
	exp, ok := i.cache[token]
	i.mu.Unlock()
	if ok && time.Now().Before(exp) {
		return true
	}
	i.calls.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, i.url, strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(i.id), url.QueryEscape(i.secret.Reveal()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var r struct {
		Active bool   `json:"active"`
		Exp    int64  `json:"exp"`
		Email  string `json:"email"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&r) != nil {
		return false
	}
	if !r.Active || !strings.EqualFold(r.Email, user) {
		return false
	}
	i.mu.Lock()
	i.cache[token] = time.Unix(r.Exp, 0)
	i.mu.Unlock()
	return true
}

func (i *introspector) stats() (tokens int, calls int64) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return len(i.cache), i.calls.Load()
}

// refreshWaits reads Postern's count of deliveries that waited for a token refresh.
func refreshWaits(ctx context.Context, rl *Relay) (float64, error) {
	text, err := rl.Postern.Get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	v, ok := harness.MetricValue(text, "postern_token_refresh_waits_total")
	if !ok {
		return 0, fmt.Errorf("postern_token_refresh_waits_total is missing from /metrics")
	}
	return v, nil
}
