package vaultstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

// client returns a vault client for srv signed in with tok (the root token when empty).
func client(t *testing.T, srv *vaulttest.Server, mount, tok string) *vault.Client {
	t.Helper()
	if tok == "" {
		tok = srv.RootToken
	}
	vc, err := vault.New(t.Context(), vault.Options{Address: srv.URL, Mount: mount, Auth: vault.Auth{Token: vault.Secret(tok)}})
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	return vc
}

func newStore(t *testing.T, vc *vault.Client, o vaultstore.Options) *vaultstore.Store {
	t.Helper()
	s, err := vaultstore.New(vc, o)
	if err != nil {
		t.Fatalf("vaultstore.New: %v", err)
	}
	return s
}

// policyToken issues a token limited to rules.
func policyToken(srv *vaulttest.Server, rules []vaultstore.Rule) string {
	p := &vaulttest.Policy{}
	for _, r := range rules {
		p.Rules = append(p.Rules, vaulttest.Rule{Path: r.Path, Capabilities: r.Capabilities})
	}
	return srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policy: p})
}

func TestConformance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mount  string
		opts   vaultstore.Options
		policy bool // an administrator's policy instead of the root token
		two    bool // every call alternates between two stores on one Vault
	}{
		{name: "quick polls", opts: vaultstore.Options{}},
		{name: "full scan every call", opts: vaultstore.Options{FullScanInterval: time.Nanosecond}},
		{name: "two stores", opts: vaultstore.Options{}, two: true},
		{name: "two stores full scans", opts: vaultstore.Options{FullScanInterval: time.Nanosecond}, two: true},
		{name: "custom mount and prefix", mount: "kv", opts: vaultstore.Options{Mount: "kv", Prefix: "apps/postern"}},
		{name: "admin policy", opts: vaultstore.Options{}, policy: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, func(t *testing.T) store.Store {
				srv := vaulttest.New(t, vaulttest.Options{Mount: tc.mount})
				tok := ""
				if tc.policy {
					tok = policyToken(srv, vaultstore.AdminPolicy("secret", "postern"))
				}
				a := newStore(t, client(t, srv, tc.mount, tok), tc.opts)
				if !tc.two {
					return a
				}
				return &alternating{a: a, b: newStore(t, client(t, srv, tc.mount, tok), tc.opts)}
			})
		})
	}
}

// alternating sends each call to a or b in turn, as two processes sharing one Vault would.
type alternating struct {
	mu   sync.Mutex
	n    int
	a, b store.Store
}

func (x *alternating) next() store.Store {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.n++
	if x.n%2 == 0 {
		return x.a
	}
	return x.b
}

func (x *alternating) Projects(ctx context.Context) ([]project.Project, error) {
	return x.next().Projects(ctx)
}
func (x *alternating) Project(ctx context.Context, name string) (project.Project, error) {
	return x.next().Project(ctx, name)
}
func (x *alternating) PutProject(ctx context.Context, p project.Project) (int, error) {
	return x.next().PutProject(ctx, p)
}
func (x *alternating) DeleteProject(ctx context.Context, name string) error {
	return x.next().DeleteProject(ctx, name)
}
func (x *alternating) Token(ctx context.Context, name string) (project.Token, error) {
	return x.next().Token(ctx, name)
}
func (x *alternating) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	return x.next().PutToken(ctx, name, t)
}
func (x *alternating) Close() error { return errors.Join(x.a.Close(), x.b.Close()) }

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer collects a log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// sidecar is a store as `postern serve` uses it, with its request counter.
type sidecar struct {
	t     *testing.T
	s     *vaultstore.Store
	vc    *vault.Client
	clock *clock
	logs  *logBuffer
}

func newSidecar(t *testing.T, srv *vaulttest.Server) *sidecar {
	t.Helper()
	sc := &sidecar{t: t, clock: &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, logs: &logBuffer{}}
	sc.vc = client(t, srv, "", policyToken(srv, vaultstore.SidecarPolicy("secret", "postern")))
	sc.s = newStore(t, sc.vc, vaultstore.Options{Now: sc.clock.Now, Logger: slog.New(slog.NewTextHandler(sc.logs, nil))})
	return sc
}

// poll calls Projects and returns the projects by name and the requests it made.
func (sc *sidecar) poll() (map[string]project.Project, vault.Stats) {
	sc.t.Helper()
	before := sc.vc.Stats()
	ps, err := sc.s.Projects(sc.t.Context())
	if err != nil {
		sc.t.Fatalf("Projects: %v", err)
	}
	byName := map[string]project.Project{}
	for _, p := range ps {
		byName[p.Name] = p
	}
	return byName, sc.vc.Stats().Sub(before)
}

func wantCost(t *testing.T, what string, got, want vault.Stats) {
	t.Helper()
	if got != want {
		t.Fatalf("%s cost %+v, want %+v", what, got, want)
	}
}

func TestProjectsCost(t *testing.T) {
	t.Parallel()
	const n = 200
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	for i := range n {
		if _, err := admin.PutProject(ctx, storetest.BasicProject(fmt.Sprintf("p%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	sc := newSidecar(t, srv)

	// The first call scans: the index, the list, every project's data.
	ps, cost := sc.poll()
	wantCost(t, "the first call", cost, vault.Stats{Reads: 1 + n, Lists: 1})
	if len(ps) != n || ps["p042"].Upstream.Host != "smtp.p042.example" || ps["p042"].Version != 1 {
		t.Fatalf("first call: %d projects, p042 = %+v", len(ps), ps["p042"])
	}

	// Steady state: one request per call. (The clock moves by a second a call, to stay clear of
	// the next full scan.)
	for range 5 {
		sc.clock.Advance(time.Second)
		_, cost := sc.poll()
		wantCost(t, "a steady-state call", cost, vault.Stats{Reads: 1})
	}

	// An administrator changes, adds and deletes projects: each costs one more read.
	p := ps["p007"]
	p.Upstream.Port = 465
	if _, err := admin.PutProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	sc.clock.Advance(time.Second)
	ps, cost = sc.poll()
	wantCost(t, "a call after a change", cost, vault.Stats{Reads: 2})
	if ps["p007"].Upstream.Port != 465 || ps["p007"].Version != 2 {
		t.Fatalf("the change was not seen: %+v", ps["p007"])
	}
	if _, err := admin.PutProject(ctx, storetest.BasicProject("new")); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteProject(ctx, "p003"); err != nil {
		t.Fatal(err)
	}
	sc.clock.Advance(time.Second)
	ps, cost = sc.poll()
	wantCost(t, "a call after an add and a delete", cost, vault.Stats{Reads: 3})
	if _, ok := ps["new"]; !ok || len(ps) != n {
		t.Fatalf("after an add and a delete: %d projects, new present %v", len(ps), ok)
	}
	if _, ok := ps["p003"]; ok {
		t.Fatal("the deleted project is still listed")
	}
	sc.clock.Advance(time.Second)
	_, cost = sc.poll()
	wantCost(t, "the call after that", cost, vault.Stats{Reads: 1})

	// A plain `vault kv put` leaves the index alone: quick polls do not see it, the next full scan
	// does. It reads the metadata of every cached project (n), the data of the one that changed, and
	// the data of the one name it lists but has not cached (p003, deleted: its record remains as a
	// tombstone).
	hand := storetest.BasicProject("p010")
	hand.Limits.MessagesPerMinute = 5
	srv.Put("postern/projects/p010", storedMap(t, hand))
	sc.clock.Advance(time.Second)
	ps, cost = sc.poll()
	wantCost(t, "a quick poll after a hand edit", cost, vault.Stats{Reads: 1})
	if ps["p010"].Limits.MessagesPerMinute != 30 {
		t.Fatal("a quick poll read a project whose index entry did not change")
	}
	sc.clock.Advance(time.Minute)
	ps, cost = sc.poll()
	wantCost(t, "a full scan", cost, vault.Stats{Reads: 1 + n + 1 + 1, Lists: 1})
	if ps["p010"].Limits.MessagesPerMinute != 5 || ps["p010"].Version != 2 {
		t.Fatalf("the full scan missed the hand edit: %+v", ps["p010"])
	}
	sc.clock.Advance(time.Second)
	_, cost = sc.poll()
	wantCost(t, "a quick poll after the full scan", cost, vault.Stats{Reads: 1})

	// Token traffic is one request each way.
	before := sc.vc.Stats()
	v, err := sc.s.PutToken(ctx, "p001", storetest.SampleToken("p001"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sc.s.Token(ctx, "p001")
	if err != nil || tok.Version != v {
		t.Fatalf("Token: version %d, %v", tok.Version, err)
	}
	tok.RefreshToken = secret.New("rotated")
	if _, err := sc.s.PutToken(ctx, "p001", tok); err != nil {
		t.Fatal(err)
	}
	wantCost(t, "a token write, read and write", sc.vc.Stats().Sub(before), vault.Stats{Reads: 1, Writes: 2})
}

func TestProjectsWhileVaultIsDown(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	admin.PutProject(ctx, storetest.BasicProject("a"))
	sc := newSidecar(t, srv)
	sc.poll()

	admin.PutProject(ctx, storetest.BasicProject("b"))
	for _, mode := range []vaulttest.Mode{vaulttest.Sealed, vaulttest.Dropping} {
		srv.SetMode(mode)
		_, err := sc.s.Projects(ctx)
		if !errors.Is(err, vaultstore.ErrUnavailable) {
			t.Fatalf("Projects while Vault is down: %v, want ErrUnavailable", err)
		}
		_, err = sc.s.Token(ctx, "a")
		if !errors.Is(err, vaultstore.ErrUnavailable) {
			t.Fatalf("Token while Vault is down: %v, want ErrUnavailable", err)
		}
		_, err = sc.s.PutToken(ctx, "a", storetest.SampleToken("a"))
		if !errors.Is(err, vaultstore.ErrUnavailable) || errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutToken while Vault is down: %v, want ErrUnavailable", err)
		}
		if sc.s.Healthy() == nil {
			t.Fatal("Healthy is nil while Vault is down")
		}
		srv.SetMode(vaulttest.Up)
	}
	// The failed calls changed nothing: the next one sees the new project.
	ps, cost := sc.poll()
	wantCost(t, "the first call after Vault came back", cost, vault.Stats{Reads: 2})
	if len(ps) != 2 {
		t.Fatalf("%d projects after Vault came back, want 2", len(ps))
	}
	if err := sc.s.Healthy(); err != nil {
		t.Fatalf("Healthy after Vault came back: %v", err)
	}
}

func TestSidecarPolicy(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", policyToken(srv, vaultstore.AdminPolicy("secret", "postern"))), vaultstore.Options{})
	admin.PutProject(ctx, storetest.OAuthProject("a"))
	sc := newSidecar(t, srv)

	if ps, _ := sc.poll(); len(ps) != 1 {
		t.Fatalf("%d projects", len(ps))
	}
	if _, err := sc.s.Project(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	v, err := sc.s.PutToken(ctx, "a", storetest.SampleToken("a"))
	if err != nil {
		t.Fatalf("PutToken under the sidecar policy: %v", err)
	}
	// After an administrator deleted and re-created the project, the sidecar creates the token
	// again over the deleted record.
	if err := admin.DeleteProject(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	admin.PutProject(ctx, storetest.OAuthProject("a"))
	if _, err := sc.s.PutToken(ctx, "a", storetest.SampleToken("a")); err != nil {
		t.Fatalf("PutToken at version 0 over a deleted token record, under the sidecar policy: %v", err)
	}
	stale := storetest.SampleToken("a")
	stale.Version = v
	if _, err := sc.s.PutToken(ctx, "a", stale); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("PutToken at a version from before the delete: %v, want ErrConflict", err)
	}

	// The sidecar may not change projects.
	_, err = sc.s.PutProject(ctx, storetest.BasicProject("b"))
	if !errors.Is(err, vault.ErrForbidden) {
		t.Fatalf("PutProject under the sidecar policy: %v, want ErrForbidden", err)
	}
	if err := sc.s.DeleteProject(ctx, "a"); !errors.Is(err, vault.ErrForbidden) {
		t.Fatalf("DeleteProject under the sidecar policy: %v, want ErrForbidden", err)
	}
}

func TestHandWrittenRecords(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	sc := newSidecar(t, srv)

	// Strings where the project keeps other types, as `vault kv put key=value` writes them.
	srv.Put("postern/projects/hand", map[string]any{
		"enabled":  "true",
		"senders":  `["noreply@hand.example"]`,
		"upstream": `{"host": "smtp.hand.example", "port": 587, "tls": "starttls"}`,
		"auth":     `{"type": "basic", "username": "noreply@hand.example", "password": "pw"}`,
		"limits":   `{"max_connections": 2}`,
	})
	p, err := admin.Project(ctx, "hand")
	if err != nil {
		t.Fatalf("Project of a key=value record: %v", err)
	}
	if errs := p.Validate(); len(errs) != 0 || !p.Enabled || p.Upstream.Port != 587 || p.Auth.Password.Reveal() != "pw" || p.Limits.MaxConnections != 2 {
		t.Fatalf("key=value record decoded as %+v (problems %v)", p, errs)
	}
	ps, _ := sc.poll()
	if _, ok := ps["hand"]; !ok {
		t.Fatal("the first scan missed a project written by hand")
	}

	// A broken edit keeps the last good version and is logged once.
	srv.Put("postern/projects/hand", map[string]any{"enabled": "true", "sendres": `["typo@hand.example"]`})
	srv.Put("postern/projects/ok", storedMap(t, storetest.BasicProject("ok")))
	for i := range 3 {
		sc.clock.Advance(time.Minute)
		ps, cost := sc.poll()
		if got := ps["hand"]; got.Version != 1 || got.Upstream.Host != "smtp.hand.example" {
			t.Fatalf("after a broken edit: %+v, want the last good version 1", got)
		}
		if _, ok := ps["ok"]; !ok {
			t.Fatal("a broken record hid another project")
		}
		if i > 0 {
			wantCost(t, "a full scan with a known broken record", cost, vault.Stats{Reads: 1 + 2, Lists: 1})
		}
	}
	if n := strings.Count(sc.logs.String(), "cannot use a project record"); n != 1 {
		t.Fatalf("the broken record was logged %d times, want once:\n%s", n, sc.logs)
	}
	if strings.Contains(sc.logs.String(), "pw") {
		t.Fatal("the log shows a password")
	}

	// A record naming another project is refused.
	srv.Put("postern/projects/other", storedMap(t, storetest.BasicProject("not-other")))
	if _, err := admin.Project(ctx, "other"); err == nil || !strings.Contains(err.Error(), "not-other") {
		t.Fatalf("Project of a record naming another project: %v", err)
	}
}

func TestIndexMissing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	for _, name := range []string{"a", "b", "c"} {
		srv.Put("postern/projects/"+name, storedMap(t, storetest.BasicProject(name)))
	}
	sc := newSidecar(t, srv)
	ps, _ := sc.poll()
	if len(ps) != 3 {
		t.Fatalf("%d projects without an index, want 3", len(ps))
	}
	sc.clock.Advance(10 * time.Second)
	_, cost := sc.poll()
	wantCost(t, "a quick poll without an index", cost, vault.Stats{Reads: 1})

	// The first PutProject builds the index from what is there.
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	if _, err := admin.PutProject(ctx, storetest.BasicProject("d")); err != nil {
		t.Fatal(err)
	}
	data, _, ok := srv.Get("postern/index")
	if !ok || len(data["projects"].(map[string]any)) != 4 {
		t.Fatalf("index after the first PutProject: %v", data)
	}
	sc.clock.Advance(10 * time.Second)
	ps, _ = sc.poll()
	if len(ps) != 4 {
		t.Fatalf("%d projects after the index was built, want 4", len(ps))
	}

	// Reindex forgets what was deleted by hand.
	srv.DeleteMetadata("postern/projects/a")
	if n, err := admin.Reindex(ctx); err != nil || n != 3 {
		t.Fatalf("Reindex: %d, %v; want 3", n, err)
	}
	sc.clock.Advance(10 * time.Second)
	ps, _ = sc.poll()
	if _, ok := ps["a"]; ok || len(ps) != 3 {
		t.Fatalf("after Reindex: %d projects, a present %v", len(ps), ok)
	}
}

func TestOpenRunsTheClient(t *testing.T) {
	t.Parallel()
	srv := vaulttest.New(t, vaulttest.Options{Mount: "kv"})
	srv.AddAppRole("postern", vaulttest.TokenOptions{TTL: 2 * time.Second, Renewable: true})
	dir := t.TempDir()
	sid := dir + "/secret-id"
	if err := os.WriteFile(sid, []byte(srv.NewSecretID("postern")), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := vaultstore.Open(t.Context(), vault.Options{Address: srv.URL, Auth: vault.Auth{Method: vault.MethodAppRole, RoleID: "postern", SecretIDFile: sid}},
		vaultstore.Options{Mount: "kv"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Client().Mount() != "kv" {
		t.Fatalf("mount %q", s.Client().Mount())
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.Stats().Renewals == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the token was never renewed: Open did not run the client")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := vaultstore.New(s.Client(), vaultstore.Options{Mount: "secret"}); err == nil {
		t.Fatal("New accepted a mount other than the client's")
	}
}

// storedMap is a project as the store writes it to Vault.
func storedMap(t *testing.T, p project.Project) map[string]any {
	t.Helper()
	b, err := project.MarshalStored(p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeJSON(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestREADME(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	blocks := regexp.MustCompile("(?s)```(\\w+)\n(.*?)```").FindAllStringSubmatch(readme, -1)
	var jsonDoc string
	var shell []string
	for _, m := range blocks {
		switch m[1] {
		case "json":
			jsonDoc = m[2]
		case "sh":
			shell = append(shell, strings.ReplaceAll(m[2], "\\\n", " "))
		}
	}
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	s := newStore(t, client(t, srv, "", ""), vaultstore.Options{})

	// The JSON file, as `vault kv put ... @file.json` stores it.
	data, err := decodeJSON(jsonDoc)
	if err != nil {
		t.Fatalf("the README's JSON example: %v", err)
	}
	srv.Put("postern/projects/client-co-uk", data)
	checkValid(t, s, "JSON example")

	// The key=value examples, as the vault CLI sends them: every value a string.
	kv := regexp.MustCompile(`(\w+)=('([^']*)'|(\S+))`)
	var commands []string
	for _, block := range shell {
		commands = append(commands, strings.Split(block, "\n")...)
	}
	for _, cmd := range commands {
		fields := map[string]any{}
		for _, m := range kv.FindAllStringSubmatch(cmd, -1) {
			if m[1] == "mount" {
				continue
			}
			fields[m[1]] = m[3] + m[4]
		}
		switch {
		case strings.Contains(cmd, "vault kv put") && len(fields) > 0:
			srv.DeleteMetadata("postern/projects/client-co-uk")
			srv.Put("postern/projects/client-co-uk", fields)
			checkValid(t, s, "key=value example")
		case strings.Contains(cmd, "vault kv patch"):
			old, _, _ := srv.Get("postern/projects/client-co-uk")
			for k, v := range fields {
				old[k] = v
			}
			srv.Put("postern/projects/client-co-uk", old)
			if p, err := s.Project(ctx, "client-co-uk"); err != nil || p.Enabled {
				t.Fatalf("after the README's patch: enabled %v, %v", p.Enabled, err)
			}
		}
	}

	for _, rules := range [][]vaultstore.Rule{vaultstore.SidecarPolicy("secret", "postern"), vaultstore.AdminPolicy("secret", "postern")} {
		if !strings.Contains(readme, "```hcl\n"+vaultstore.HCL(rules)+"```") {
			t.Errorf("the README does not show this policy as HCL renders it:\n%s", vaultstore.HCL(rules))
		}
	}
}

func checkValid(t *testing.T, s *vaultstore.Store, what string) {
	t.Helper()
	p, err := s.Project(t.Context(), "client-co-uk")
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if errs := p.Validate(); len(errs) != 0 || p.Auth.Password.Reveal() != "change-me" {
		t.Fatalf("%s: decoded %+v, problems %v", what, p, errs)
	}
}

func decodeJSON(s string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var m map[string]any
	err := dec.Decode(&m)
	return m, err
}

// A Vault that lists nothing where it listed projects (its records gone without the tombstones a
// delete leaves, as after a wrong path, a replaced Vault or a policy change) is never read as "no
// project": Projects fails with store.ErrProjectsLost and keeps its state. Projects deleted with
// DeleteProject leave tombstones: that empty store is believed.
func TestProjectsLost(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	for _, name := range []string{"a", "b"} {
		if _, err := admin.PutProject(ctx, storetest.BasicProject(name)); err != nil {
			t.Fatal(err)
		}
	}
	sc := newSidecar(t, srv)
	if ps, _ := sc.poll(); len(ps) != 2 {
		t.Fatalf("%d projects, want 2", len(ps))
	}

	// Everything vanishes, index included: quick poll and full scan both refuse.
	srv.DeleteMetadata("postern/projects/a")
	srv.DeleteMetadata("postern/projects/b")
	srv.DeleteMetadata("postern/index")
	for _, wait := range []time.Duration{10 * time.Second, 2 * time.Minute} {
		sc.clock.Advance(wait)
		ps, err := sc.s.Projects(ctx)
		if !errors.Is(err, store.ErrProjectsLost) || !strings.Contains(err.Error(), "postern/projects/") {
			t.Fatalf("after %s: %d projects, %v; want ErrProjectsLost", wait, len(ps), err)
		}
	}

	// A new sidecar finds an index naming projects that are not listed.
	srv.Put("postern/index", map[string]any{"projects": map[string]any{"a": 1, "b": 1}})
	fresh := newSidecar(t, srv)
	if _, err := fresh.s.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("index without records: %v; want ErrProjectsLost", err)
	}

	// Deleted on purpose: tombstones, an empty index, and an empty answer.
	srv.DeleteMetadata("postern/index")
	for _, name := range []string{"c", "d"} {
		if _, err := admin.PutProject(ctx, storetest.BasicProject(name)); err != nil {
			t.Fatal(err)
		}
	}
	sc2 := newSidecar(t, srv)
	if ps, _ := sc2.poll(); len(ps) != 2 {
		t.Fatalf("%d projects, want 2", len(ps))
	}
	for _, name := range []string{"c", "d"} {
		if err := admin.DeleteProject(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	for _, wait := range []time.Duration{10 * time.Second, 2 * time.Minute} {
		sc2.clock.Advance(wait)
		if ps, _ := sc2.poll(); len(ps) != 0 {
			t.Fatalf("after deleting every project: %d", len(ps))
		}
	}
}
