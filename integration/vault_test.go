//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// vaultAdmin is a config for `postern project ...` as an administrator: the same Vault, signed in
// with the root token from a token file. Its Postern is never started.
func vaultAdmin(t *testing.T, v *harness.Vault, addr, dir string) *harness.Postern {
	t.Helper()
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, err := v.WriteRootTokenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	store := fmt.Sprintf("  vault:\n    address: %s\n    auth:\n      token_file: %s", addr, tokenFile)
	admin, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: dir, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return admin
}

// vaultAddProject adds a project with the administrator's `postern project add` and waits until
// every Postern given routes its senders.
func vaultAddProject(t *testing.T, ctx context.Context, e *harness.Env, admin *harness.Postern, po harness.ProjectOptions, routers ...*harness.Postern) {
	t.Helper()
	args, password, senders, err := e.ProjectAddArgs(po)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CLI(ctx, password+"\n", args...); err != nil {
		t.Fatalf("adding project %s: %v", po.Name, err)
	}
	for _, p := range routers {
		for _, s := range senders {
			if err := p.WaitRouted(ctx, s, true); err != nil {
				t.Fatalf("adding project %s: %v", po.Name, err)
			}
		}
	}
}

// vaultProjectStatus is one row of Postern's /api/v1/projects.
type vaultProjectStatus struct {
	Name     string `json:"name"`
	Upstream string `json:"upstream"`
	State    string `json:"state"`
	Reason   string `json:"reason"`
}

func vaultProjectRow(ctx context.Context, p *harness.Postern, name string) (vaultProjectStatus, error) {
	body, err := p.Get(ctx, "/api/v1/projects")
	if err != nil {
		return vaultProjectStatus{}, err
	}
	var out struct {
		Projects []vaultProjectStatus `json:"projects"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return vaultProjectStatus{}, fmt.Errorf("decoding /api/v1/projects: %w", err)
	}
	for _, r := range out.Projects {
		if r.Name == name {
			return r, nil
		}
	}
	return vaultProjectStatus{}, fmt.Errorf("project %s is not in /api/v1/projects", name)
}

// vaultWaitFor polls cond every 200 ms until it holds or ctx ends.
func vaultWaitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// vaultMetric returns the value of an unlabelled metric from Postern's /metrics.
func vaultMetric(ctx context.Context, p *harness.Postern, name string) (float64, error) {
	body, err := p.Get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("no metric %s in /metrics", name)
	}
	return strconv.ParseFloat(m[1], 64)
}

// Projects and passwords live in Vault. The sidecar signs in with AppRole (a wrapped secret id)
// under the shipped policy; administrators use `postern project` with the root token. Each
// project's mail leaves through its own upstream with its own credentials; a wrong password keeps
// the mail queued until `postern project update` fixes it; a record rewritten with Vault's HTTP
// API, as `vault kv put` would, moves the project to another upstream without a restart; delivering
// reads nothing from Vault; and the policy allows the sidecar what it needs and no more.
func TestVaultRelayProjectsAppRole(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := harness.StartVault(t)
	proxy := harness.StartVaultProxy(t, v)

	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := os.ReadFile(filepath.Join(root, "contrib", "vault", "postern-sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.PutPolicy(ctx, "postern-sidecar", string(policy)); err != nil {
		t.Fatal(err)
	}
	roleID, err := v.CreateAppRole(ctx, "postern", "postern-sidecar")
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := v.AppRoleSecretID(ctx, "postern", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secretDir := harness.TempDir(t)
	secretIDFile := filepath.Join(secretDir, "secret-id")
	if err := os.WriteFile(secretIDFile, []byte(wrapped+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	e := startEnv(t, harness.Options{PosternStore: harness.AppRoleStoreYAML(proxy.Addr, roleID, secretIDFile, true)})
	e.Secrets.Add("Vault root token", v.RootToken)
	e.Secrets.Add("wrapped AppRole secret id", wrapped)
	admin := vaultAdmin(t, v, v.Addr, filepath.Join(e.Dir, "admin"))
	a, b := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, passwordA := a.User()
	userB, passwordB := b.User()
	vaultAddProject(t, ctx, e, admin, harness.ProjectOptions{Name: "client-a", Org: "client-a", Password: "not-the-password"}, e.Postern)
	vaultAddProject(t, ctx, e, admin, harness.ProjectOptions{Name: "client-b", Org: "client-b"}, e.Postern)
	for _, name := range []string{"client-a", "client-b"} {
		if n, err := v.KVVersion(ctx, "postern/projects/"+name); err != nil || n < 1 {
			t.Fatalf("project %s in Vault: version %d, %v; want a record", name, n, err)
		}
	}

	t.Run("the sidecar unwrapped its secret id", func(t *testing.T) {
		code, _ := v.Request(ctx, http.MethodPost, "sys/wrapping/unwrap", wrapped, nil, &struct{}{})
		if code != http.StatusBadRequest {
			t.Errorf("unwrapping the sidecar's wrapped secret id again: status %d, want 400 (used up)", code)
		}
	})

	mailA := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	mailB := &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
	sentA := submit(t, ctx, e, mailA)
	submit(t, ctx, e, mailB)

	t.Run("each project through its own upstream", func(t *testing.T) {
		got, err := e.Upstream.WaitForMessage(ctx, "bob@dest.test", harness.WithID(mailB.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.PassedThrough(b.Hostname) || got.PassedThrough(a.Hostname) {
			t.Errorf("Received by %v, want %s only", got.ReceivedBy(), b.Hostname)
		}
		if auth := got.AuthenticatedSenders(); len(auth) != 1 || auth[0] != userB {
			t.Errorf("authenticated senders %v, want [%s]", auth, userB)
		}
	})

	t.Run("wrong password in Vault defers, project update fixes it", func(t *testing.T) {
		q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
			return len(q) == 1 && len(q[0].Recipients) == 1 && strings.Contains(q[0].Recipients[0].DelayReason, "4.7.0")
		})
		if err != nil {
			t.Fatalf("want client-a's mail deferred with 4.7.0: %v", err)
		}
		t.Logf("deferred: %s", q[0].Recipients[0].DelayReason)
		if bounced := e.Front.LogLines(regexp.MustCompile(sentA.QueueID + `: .*status=bounced`)); len(bounced) > 0 {
			t.Fatalf("a wrong password bounced the mail: %v", bounced)
		}
		before, _ := v.KVVersion(ctx, "postern/projects/client-a")
		if _, err := admin.CLI(ctx, passwordA+"\n", "project", "update", "--password-stdin", "client-a"); err != nil {
			t.Fatal(err)
		}
		if after, err := v.KVVersion(ctx, "postern/projects/client-a"); err != nil || after != before+1 {
			t.Errorf("client-a's version in Vault went from %d to %d (%v), want one more", before, after, err)
		}
		// The sidecar sees the change at its next reload (reload_interval 1s) without a restart.
		// Flushing before that only defers the mail again, so flush until it leaves.
		lastFlush := time.Time{}
		err = vaultWaitFor(ctx, "client-a's mail to arrive", func() (bool, error) {
			if n := countByID(t, e, "alice@dest.test", mailA.ID); n > 0 {
				return true, nil
			}
			if time.Since(lastFlush) < 2*time.Second {
				return false, nil
			}
			lastFlush = time.Now()
			return false, e.Front.Flush(ctx)
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(mailA.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.PassedThrough(a.Hostname) || got.PassedThrough(b.Hostname) {
			t.Errorf("Received by %v, want %s only", got.ReceivedBy(), a.Hostname)
		}
		if auth := got.AuthenticatedSenders(); len(auth) != 1 || auth[0] != userA {
			t.Errorf("authenticated senders %v, want [%s]", auth, userA)
		}
		if err := e.Front.WaitQueueEmpty(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countByID(t, e, "alice@dest.test", mailA.ID); n != 1 {
			t.Errorf("%d copies delivered, want exactly 1", n)
		}
	})

	t.Run("delivering reads nothing from Vault", func(t *testing.T) {
		before := proxy.Counts()
		var mails []*harness.Mail
		for i := range 6 {
			m := &harness.Mail{From: userA, To: []string{"carol@dest.test"}}
			if i%2 == 1 {
				m.From = userB
			}
			submit(t, ctx, e, m)
			mails = append(mails, m)
		}
		for _, m := range mails {
			if _, err := e.Upstream.WaitForMessage(ctx, "carol@dest.test", harness.WithID(m.ID)); err != nil {
				t.Fatal(err)
			}
		}
		after := proxy.Counts()
		var during []string
		for k, n := range after {
			if d := n - before[k]; d > 0 {
				during = append(during, fmt.Sprintf("%s ×%d", k, d))
				// What the sidecar does on its own clock: the index poll every reload interval
				// and the periodic full scan (LIST and metadata). Anything else would be a request
				// made for a message.
				periodic := k == "GET secret/data/postern/index" ||
					k == "LIST secret/metadata/postern/projects" || k == "LIST secret/metadata/postern/projects/" ||
					strings.HasPrefix(k, "GET secret/metadata/postern/projects/")
				if !periodic {
					t.Errorf("Vault request while delivering: %s ×%d", k, d)
				}
			}
		}
		sort.Strings(during)
		t.Logf("Vault requests while delivering %d messages: %v", len(mails), during)
	})

	t.Run("the shipped policy, against the real server", func(t *testing.T) {
		if out, err := e.Postern.CLI(ctx, "", "vault-policy"); err != nil {
			t.Error(err)
		} else if strings.TrimSpace(out) != strings.TrimSpace(string(policy)) {
			t.Errorf("postern vault-policy differs from contrib/vault/postern-sidecar.hcl:\n%s", out)
		}
		sid, err := v.AppRoleSecretID(ctx, "postern", 0)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := v.AppRoleLogin(ctx, roleID, sid)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.KVGet(ctx, "postern/projects/client-a", tok, nil); err != nil {
			t.Errorf("the sidecar's policy cannot read a project: %v", err)
		}
		if _, err := v.KVGet(ctx, "postern/index", tok, nil); err != nil {
			t.Errorf("the sidecar's policy cannot read the index: %v", err)
		}
		if n, err := v.KVPut(ctx, "postern/tokens/x", tok, map[string]any{"state": "ok"}); err != nil || n != 1 {
			t.Errorf("the sidecar's policy cannot write a token record: version %d, %v", n, err)
		}
		for _, path := range []string{"secret/data/postern/projects/x", "secret/data/postern/projects/client-a", "secret/data/postern/index"} {
			code, _ := v.Request(ctx, http.MethodPost, path, tok, map[string]any{"data": map[string]any{"enabled": true}}, &struct{}{})
			if code != http.StatusForbidden {
				t.Errorf("writing %s with the sidecar's policy: status %d, want 403", path, code)
			}
		}
		code, _ := v.Request(ctx, http.MethodDelete, "secret/metadata/postern/projects/client-a", tok, nil, &struct{}{})
		if code != http.StatusForbidden {
			t.Errorf("deleting a project with the sidecar's policy: status %d, want 403", code)
		}
	})

	t.Run("a record rewritten with the HTTP API moves the project without a restart", func(t *testing.T) {
		var rec map[string]any
		if _, err := v.KVGet(ctx, "postern/projects/client-a", "", &rec); err != nil {
			t.Fatal(err)
		}
		up, _ := rec["upstream"].(map[string]any)
		auth, _ := rec["auth"].(map[string]any)
		if up == nil || auth == nil {
			t.Fatalf("client-a's record has no upstream or auth object: keys %v", keysOf(rec))
		}
		up["port"] = b.Port
		auth["username"] = userB
		auth["password"] = passwordB
		written := time.Now()
		if _, err := v.KVPut(ctx, "postern/projects/client-a", "", rec); err != nil {
			t.Fatal(err)
		}
		// Plain writes leave the index alone: the sidecar's periodic full scan
		// (store.vault.full_scan_interval, 5s here) picks them up. The deadline is generous.
		wait, cancelWait := context.WithTimeout(ctx, 90*time.Second)
		defer cancelWait()
		want := fmt.Sprintf(":%d", b.Port)
		err := vaultWaitFor(wait, "Postern to see client-a's new upstream", func() (bool, error) {
			r, err := vaultProjectRow(wait, e.Postern, "client-a")
			return err == nil && strings.HasSuffix(r.Upstream, want), err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the sidecar saw the direct write after %s", time.Since(written).Round(100*time.Millisecond))

		m := &harness.Mail{From: userA, To: []string{"carol@dest.test"}}
		submit(t, ctx, e, m)
		got, err := e.Upstream.WaitForMessage(ctx, "carol@dest.test", harness.WithID(m.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.PassedThrough(b.Hostname) || got.PassedThrough(a.Hostname) {
			t.Errorf("Received by %v, want %s only (the project's new upstream)", got.ReceivedBy(), b.Hostname)
		}
		if auth := got.AuthenticatedSenders(); len(auth) != 1 || auth[0] != userB {
			t.Errorf("authenticated senders %v, want [%s] (the project's new credentials)", auth, userB)
		}
	})
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// vaultOAuthMailbox is the IdP account the OAuth project sends as.
const vaultOAuthMailbox = "alice@client-a.test"

// Two Posterns share one Vault and one OAuth grant whose refresh tokens rotate with reuse
// detection: while both deliver, and refresh, the grant is never replayed and mail from both
// keeps arriving. Then Vault stops answering: mail keeps flowing on cached credentials, the token
// refreshed meanwhile waits in memory, and is written once Vault is back.
func TestVaultOAuthTwoReplicasThenVaultPaused(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v := harness.StartVault(t)
	// Tokens live 16 s: due for a refresh after 8 s (half their life) and usable for 4 s more, so a
	// delivery in that window starts a background refresh and does not wait for it.
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTTL: 16 * time.Second})
	e := startEnv(t, harness.Options{PosternStore: v.StoreYAML(mustTokenFile(t, v))})
	e.Secrets.Add("Vault root token", v.RootToken)
	sub := harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: idp, RelayPort: e.Upstream.DirectPort})
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: filepath.Join(e.Dir, "postern2"), Instance: "it2", SMTP: true,
		Store: v.StoreYAML(mustTokenFile(t, v))})
	if err != nil {
		t.Fatal(err)
	}
	harness.StartPostern(t, p2)
	admin := e.Postern // the same root token file: `postern project` as an administrator

	caFile := filepath.Join(e.Dir, "submission-ca.pem")
	if err := os.WriteFile(caFile, sub.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(sub.Addr, ":")
	client, _ := idp.Client(harness.IdPDefaultClientID)
	if _, err := admin.CLI(ctx, client.Secret.Reveal()+"\n", "project", "add",
		"--sender", vaultOAuthMailbox, "--host", "127.0.0.1", "--port", port, "--tls", "starttls", "--ca-file", caFile,
		"--auth", "oauth2", "--provider", "generic", "--client-id", client.ID, "--client-secret-stdin",
		"--auth-url", idp.AuthorizeURL, "--token-url", idp.TokenURL, "--scopes", harness.IdPScopes,
		"--username", vaultOAuthMailbox, "oauth-a"); err != nil {
		t.Fatal(err)
	}
	vaultAddProject(t, ctx, e, admin, harness.ProjectOptions{Name: "client-a", Org: "client-a"}, e.Postern, p2)
	for _, p := range []*harness.Postern{e.Postern, p2} {
		if err := p.WaitRouted(ctx, vaultOAuthMailbox, true); err != nil {
			t.Fatal(err)
		}
	}

	// The sign-in, as the callback would store it.
	grant, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: vaultOAuthMailbox, Password: secret.New("password")})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := project.MarshalStoredToken(project.Token{
		AccessToken: grant.AccessToken, TokenType: grant.TokenType, Expiry: grant.Expiry, RefreshToken: grant.RefreshToken,
		Account: vaultOAuthMailbox, State: project.TokenOK, RefreshedBy: "signin", UpdatedAt: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	if err := json.Unmarshal(rec, &data); err != nil {
		t.Fatal(err)
	}
	if _, err := v.KVPut(ctx, "postern/tokens/oauth-a", "", data); err != nil {
		t.Fatal(err)
	}

	viaFront := func(t *testing.T) *harness.Mail {
		m := &harness.Mail{From: vaultOAuthMailbox, To: []string{"carol@dest.test"}}
		submit(t, ctx, e, m)
		return m
	}
	viaP2 := func(t *testing.T) (*harness.Mail, error) {
		m := &harness.Mail{From: vaultOAuthMailbox, To: []string{"carol@dest.test"}}
		_, err := harness.Client{Addr: p2.SMTPAddr}.Send(ctx, m)
		return m, err
	}
	arrived := func(t *testing.T, m *harness.Mail) {
		t.Helper()
		got, err := e.Upstream.WaitForMessage(ctx, "carol@dest.test", harness.WithID(m.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(got.Received(), "\n"), "submission.test") {
			t.Errorf("Received %v: want it through the XOAUTH2 submission server", got.Received())
		}
	}
	tokenRecord := func(t *testing.T, version int) project.Token {
		t.Helper()
		path := "secret/data/postern/tokens/oauth-a"
		if version > 0 {
			path += "?version=" + strconv.Itoa(version)
		}
		var out struct {
			Data struct {
				Data json.RawMessage `json:"data"`
			} `json:"data"`
		}
		if _, err := v.Request(ctx, http.MethodGet, path, "", nil, &out); err != nil {
			t.Fatal(err)
		}
		if d := strings.TrimSpace(string(out.Data.Data)); d == "" || d == "null" {
			return project.Token{RefreshedBy: "(no data)"} // a deleted or destroyed version
		}
		tok, err := project.UnmarshalStoredToken(out.Data.Data)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	noReplay := func(t *testing.T) {
		t.Helper()
		if l := idp.Log(); strings.Contains(l, "grant revoked") {
			t.Errorf("the IdP revoked the grant (a refresh token was replayed)")
		}
		for i, p := range []*harness.Postern{e.Postern, p2} {
			if r, err := vaultProjectRow(ctx, p, "oauth-a"); err != nil || r.State != "ok" {
				t.Errorf("postern %d: oauth-a is %q (%s), %v; want ok", i+1, r.State, r.Reason, err)
			}
		}
		if tok := tokenRecord(t, 0); tok.State != project.TokenOK {
			t.Errorf("the token record's state is %q (%s), want ok", tok.State, tok.Reason)
		}
	}

	// turn delivers one message through a replica ("it" behind the front Postfix, "it2" over
	// SMTP), waits for it, and waits until the refresh the delivery started is in Vault, written
	// by that replica. Refreshes in turns never overlap.
	turn := func(t *testing.T, replica string) {
		t.Helper()
		waitTokenDue(t, ctx, tokenRecord(t, 0))
		before, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		var m *harness.Mail
		if replica == "it" {
			m = viaFront(t)
		} else if m, err = viaP2(t); err != nil {
			t.Fatalf("postern 2 refused a message: %v", err)
		}
		arrived(t, m)
		wait, cancelWait := context.WithTimeout(ctx, 60*time.Second)
		defer cancelWait()
		// The refresh writes twice: its claim on the record, then the new token, which ends the
		// claim and names the writer.
		err = vaultWaitFor(wait, "the refresh to be written", func() (bool, error) {
			n, err := v.KVVersion(wait, "postern/tokens/oauth-a")
			if err != nil || n <= before {
				return false, err
			}
			rec := tokenRecord(t, 0)
			return rec.RefreshingBy == "" && rec.RefreshedBy != "" && n >= before+2, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if by := tokenRecord(t, 0).RefreshedBy; by != replica {
			t.Errorf("the token record was last written by %q, want %s", by, replica)
		}
	}

	t.Run("two replicas take turns refreshing one grant", func(t *testing.T) {
		v0, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 8 {
			turn(t, []string{"it", "it2"}[i%2])
		}
		v1, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the token record went from version %d to %d", v0, v1)
		noReplay(t)
	})
	if t.Failed() {
		return
	}

	t.Run("Vault paused: cached credentials deliver, the refreshed token waits, then lands", func(t *testing.T) {
		turn(t, "it") // postern 1 holds a recent token, written
		waitTokenDue(t, ctx, tokenRecord(t, 0))
		before, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Pause(); err != nil {
			t.Fatal(err)
		}
		resumed := false
		defer func() {
			if !resumed {
				_ = v.Resume()
			}
		}()
		userA, _ := e.Upstream.Org("client-a").User()
		basic := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
		submit(t, ctx, e, basic)
		oauthMail := viaFront(t)
		wait, cancelWait := context.WithTimeout(ctx, 60*time.Second)
		defer cancelWait()
		if _, err := e.Upstream.WaitForMessage(wait, "alice@dest.test", harness.WithID(basic.ID)); err != nil {
			t.Errorf("basic-auth mail while Vault is paused: %v", err)
		}
		if _, err := e.Upstream.WaitForMessage(wait, "carol@dest.test", harness.WithID(oauthMail.ID)); err != nil {
			t.Errorf("OAuth mail with a cached token while Vault is paused: %v", err)
		}
		err = vaultWaitFor(wait, "a refreshed token pending for Vault", func() (bool, error) {
			n, err := vaultMetric(wait, e.Postern, "postern_token_pending_writes")
			return n >= 1, err
		})
		if err != nil {
			t.Fatal(err)
		}
		ready, err := e.Postern.Get(ctx, "/readyz")
		if err != nil {
			t.Errorf("/readyz while Vault is paused: %v (%s)", err, ready)
		}
		t.Logf("/readyz while Vault is paused: %s", strings.TrimSpace(ready))
		var rz struct {
			Ready  bool `json:"ready"`
			Checks []struct {
				Name     string `json:"name"`
				Degraded bool   `json:"degraded"`
			} `json:"checks"`
		}
		if err := json.Unmarshal([]byte(ready), &rz); err != nil {
			t.Errorf("decoding /readyz: %v", err)
		}
		degraded := false
		for _, c := range rz.Checks {
			degraded = degraded || c.Degraded
		}
		if !rz.Ready || !degraded {
			t.Errorf("/readyz while Vault is paused and a token waits: ready %v, degraded %v; want ready and degraded", rz.Ready, degraded)
		}
		later := viaFront(t)
		if _, err := e.Upstream.WaitForMessage(wait, "carol@dest.test", harness.WithID(later.ID)); err != nil {
			t.Errorf("OAuth mail with a pending token while Vault is paused: %v", err)
		}

		if err := v.Resume(); err != nil {
			t.Fatal(err)
		}
		resumed = true
		err = vaultWaitFor(wait, "the pending token write to land", func() (bool, error) {
			n, err := vaultMetric(wait, e.Postern, "postern_token_pending_writes")
			return err == nil && n == 0, err
		})
		if err != nil {
			t.Fatal(err)
		}
		after, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		// A refresh started while Vault was paused may still be finishing: let it, so that the
		// replicas below take turns.
		stable, last := 0, after
		err = vaultWaitFor(wait, "postern 1 to finish refreshing", func() (bool, error) {
			n, err := v.KVVersion(wait, "postern/tokens/oauth-a")
			if err != nil || n != last {
				stable, last = 0, n
				return false, err
			}
			stable++
			return stable >= 15, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if after <= before {
			t.Errorf("the token record's version is %d, was %d before the pause: want the refreshed token written", after, before)
		}
		if tok := tokenRecord(t, 0); tok.RefreshedBy != "it" {
			t.Errorf("the newest token record was written by %q, want it (postern 1)", tok.RefreshedBy)
		}
		// Both replicas go on from the record that landed.
		turn(t, "it")
		turn(t, "it2")
		noReplay(t)
	})
	if t.Failed() {
		return
	}

	// Two replicas whose refreshes overlap. Each refresh claims the record with a check-and-set
	// before redeeming the refresh token, so the other replica never redeems the same one: with
	// the server's reuse detection a replay would revoke the whole grant.
	t.Run("two replicas refresh one grant concurrently", func(t *testing.T) {
		v0, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu    sync.Mutex
			mails []*harness.Mail
			wg    sync.WaitGroup
		)
		end := time.Now().Add(20 * time.Second)
		wg.Go(func() {
			for time.Now().Before(end) {
				m := &harness.Mail{From: vaultOAuthMailbox, To: []string{"carol@dest.test"}}
				if _, err := e.Front.Submit(ctx, m); err != nil {
					t.Errorf("the front refused a message: %v", err)
					return
				}
				mu.Lock()
				mails = append(mails, m)
				mu.Unlock()
				time.Sleep(250 * time.Millisecond)
			}
		})
		wg.Go(func() {
			for time.Now().Before(end) {
				m, err := viaP2(t)
				if err != nil {
					t.Errorf("postern 2 refused a message: %v", err)
					return
				}
				mu.Lock()
				mails = append(mails, m)
				mu.Unlock()
				time.Sleep(250 * time.Millisecond)
			}
		})
		wg.Wait()
		for _, m := range mails {
			arrived(t, m)
		}
		v1, err := v.KVVersion(ctx, "postern/tokens/oauth-a")
		if err != nil {
			t.Fatal(err)
		}
		// Vault keeps the last versions only; older ones read as "(no data)".
		writers := map[string]int{}
		for n := max(v0+1, v1-9); n <= v1; n++ {
			writers[tokenRecord(t, n).RefreshedBy]++
		}
		t.Logf("%d messages; the token record went from version %d to %d, the last written by %v", len(mails), v0, v1, writers)
		if v1 < v0+2 {
			t.Errorf("the token record's version went from %d to %d: want refreshes written", v0, v1)
		}
		// Both replicas asked for refreshes all along; the claims in the record let one redeem at
		// a time. A replayed refresh token would have revoked the grant.
		noReplay(t)
		if err := e.Front.WaitQueueEmpty(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func mustTokenFile(t *testing.T, v *harness.Vault) string {
	t.Helper()
	f, err := v.WriteRootTokenFile(harness.TempDir(t))
	if err != nil {
		t.Fatal(err)
	}
	return f
}
