// Package storetest is the conformance suite every store.Store implementation must pass, so the file
// store and the Vault store behave the same to the sidecar and to administrators' tools.
//
//  1. The implementation's test calls Run with a function that opens a new, empty store.
//  2. Run opens one store per subtest and closes it when the subtest ends.
//  3. Each subtest checks one promise of the store package: records round trip with their secrets,
//     versions increase, stale writes get store.ErrConflict and change nothing, missing records give
//     store.ErrNotFound, deleting a project removes its token.
//
// Versions must keep increasing across a delete: a record re-created after DeleteProject gets a version
// above the deleted one's, so a writer still holding a version read before the delete gets
// store.ErrConflict instead of overwriting the new record.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
)

// Opener returns a new, empty store for one subtest.
type Opener func(t *testing.T) store.Store

// Run runs the suite against the stores open returns. Subtests run in parallel.
func Run(t *testing.T, open Opener) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Empty", testEmpty},
		{"ProjectRoundTrip", testProjectRoundTrip},
		{"ProjectVersionsIncrease", testProjectVersionsIncrease},
		{"ProjectCAS", testProjectCAS},
		{"ProjectResultsAreCopies", testProjectResultsAreCopies},
		{"TokenRoundTrip", testTokenRoundTrip},
		{"TokenCAS", testTokenCAS},
		{"DeleteRemovesToken", testDeleteRemovesToken},
		{"RecreateAfterDelete", testRecreateAfterDelete},
		{"RemoveLeavesTombstone", testRemoveLeavesTombstone},
		{"RecordsAreIndependent", testRecordsAreIndependent},
		{"ConcurrentTokenUpdates", testConcurrentTokenUpdates},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// BasicProject returns a valid basic-auth project named name with a password.
func BasicProject(name string) project.Project {
	return project.Project{
		Name:     name,
		Enabled:  true,
		Senders:  []string{"noreply@" + name + ".example", "@mail." + name + ".example"},
		SendAs:   []string{"@" + name + ".example"},
		Upstream: project.Upstream{Host: "smtp." + name + ".example", Port: 587, TLS: project.TLSStartTLS, ServerName: "mx." + name + ".example"},
		Auth:     project.Auth{Type: project.AuthBasic, Username: "noreply@" + name + ".example", Password: secret.New("password-of-" + name), Mechanism: "LOGIN"},
		Limits:   project.Limits{MaxConnections: 2, MessagesPerMinute: 30, RecipientsPerDay: 10000, MaxRecipients: 500, MaxMessageBytes: 1 << 20},
	}
}

// OAuthProject returns a valid OAuth project named name with a client secret.
func OAuthProject(name string) project.Project {
	p := BasicProject(name)
	p.Auth = project.Auth{
		Type:     project.AuthOAuth2,
		Username: "noreply@" + name + ".example",
		OAuth: &project.OAuth{
			Provider:     "microsoft",
			Tenant:       name + ".example",
			ClientID:     "client-id-" + name,
			ClientSecret: secret.New("client-secret-of-" + name),
			Scopes:       []string{"https://outlook.office.com/SMTP.Send", "offline_access"},
			// A stored date survives the round trip as it is.
			ClientSecretExpires: time.Date(2031, 3, 4, 0, 0, 0, 0, time.UTC),
		},
	}
	return p
}

// SampleToken returns a token record with both secrets set.
func SampleToken(name string) project.Token {
	return project.Token{
		AccessToken:  secret.New("access-token-of-" + name),
		TokenType:    "Bearer",
		Expiry:       time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC),
		RefreshToken: secret.New("refresh-token-of-" + name),
		Account:      "noreply@" + name + ".example",
		State:        project.TokenOK,
		RefreshedBy:  "postern-test",
		UpdatedAt:    time.Date(2029, 12, 31, 0, 0, 0, 0, time.UTC),
	}
}

func ctxFor(t *testing.T) context.Context { return t.Context() }

func put(t *testing.T, s store.Store, p project.Project) int {
	t.Helper()
	v, err := s.PutProject(ctxFor(t), p)
	if err != nil {
		t.Fatalf("PutProject(%s): %v", p.Name, err)
	}
	if v <= 0 {
		t.Fatalf("PutProject(%s) returned version %d, want > 0", p.Name, v)
	}
	return v
}

func putToken(t *testing.T, s store.Store, name string, tok project.Token) int {
	t.Helper()
	v, err := s.PutToken(ctxFor(t), name, tok)
	if err != nil {
		t.Fatalf("PutToken(%s, version %d): %v", name, tok.Version, err)
	}
	if v <= 0 {
		t.Fatalf("PutToken(%s) returned version %d, want > 0", name, v)
	}
	return v
}

func getProject(t *testing.T, s store.Store, name string) project.Project {
	t.Helper()
	p, err := s.Project(ctxFor(t), name)
	if err != nil {
		t.Fatalf("Project(%s): %v", name, err)
	}
	return p
}

func getToken(t *testing.T, s store.Store, name string) project.Token {
	t.Helper()
	tok, err := s.Token(ctxFor(t), name)
	if err != nil {
		t.Fatalf("Token(%s): %v", name, err)
	}
	return tok
}

func listNames(t *testing.T, s store.Store) []string {
	t.Helper()
	ps, err := s.Projects(ctxFor(t))
	if err != nil {
		t.Fatalf("Projects: %v", err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

// sameProject compares everything but Version, secrets included, without printing them.
func sameProject(t *testing.T, got, want project.Project) {
	t.Helper()
	got.Version, want.Version = 0, 0
	if !got.Auth.Password.Equal(want.Auth.Password) {
		t.Errorf("project %s: the password did not survive the round trip", want.Name)
	}
	if (got.Auth.OAuth == nil) != (want.Auth.OAuth == nil) {
		t.Fatalf("project %s: oauth settings present=%v, want %v", want.Name, got.Auth.OAuth != nil, want.Auth.OAuth != nil)
	}
	if want.Auth.OAuth != nil && !got.Auth.OAuth.ClientSecret.Equal(want.Auth.OAuth.ClientSecret) {
		t.Errorf("project %s: the client secret did not survive the round trip", want.Name)
	}
	// Secrets print redacted, so a mismatch report below cannot leak them.
	if !reflect.DeepEqual(got, want) {
		t.Errorf("project %s changed in the round trip:\n got  %+v\n want %+v", want.Name, got, want)
	}
}

func sameToken(t *testing.T, got, want project.Token) {
	t.Helper()
	if !got.AccessToken.Equal(want.AccessToken) || !got.RefreshToken.Equal(want.RefreshToken) {
		t.Errorf("token secrets did not survive the round trip")
	}
	if !got.Expiry.Equal(want.Expiry) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Errorf("token times changed: expiry %v updated %v, want %v and %v", got.Expiry, got.UpdatedAt, want.Expiry, want.UpdatedAt)
	}
	got.Expiry, want.Expiry, got.UpdatedAt, want.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	got.Version, want.Version = 0, 0
	if !reflect.DeepEqual(got, want) {
		t.Errorf("token changed in the round trip:\n got  %+v\n want %+v", got, want)
	}
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func testEmpty(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	if names := listNames(t, s); len(names) != 0 {
		t.Fatalf("a new store lists projects %v", names)
	}
	_, err := s.Project(ctx, "nobody")
	wantErr(t, "Project of a missing project", err, store.ErrNotFound)
	_, err = s.Token(ctx, "nobody")
	wantErr(t, "Token of a missing project", err, store.ErrNotFound)
	wantErr(t, "DeleteProject of a missing project", s.DeleteProject(ctx, "nobody"), store.ErrNotFound)
}

func testProjectRoundTrip(t *testing.T, s store.Store) {
	for _, p := range []project.Project{BasicProject("basic"), OAuthProject("oauth")} {
		v := put(t, s, p)
		got := getProject(t, s, p.Name)
		if got.Version != v {
			t.Errorf("Project(%s).Version = %d, PutProject returned %d", p.Name, got.Version, v)
		}
		sameProject(t, got, p)
	}
	ps, err := s.Projects(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("Projects returned %d projects, want 2", len(ps))
	}
	for _, p := range ps {
		if p.Version <= 0 {
			t.Errorf("Projects: %s has version %d", p.Name, p.Version)
		}
		want := BasicProject(p.Name)
		if p.Name == "oauth" {
			want = OAuthProject(p.Name)
		}
		sameProject(t, p, want)
	}
}

func testProjectVersionsIncrease(t *testing.T, s store.Store) {
	p := BasicProject("client-a")
	last := 0
	for i := range 4 {
		p.Limits.MessagesPerMinute = i + 1
		p.Version = 0 // unconditional
		if i%2 == 1 {
			p.Version = last // conditional on the version just written
		}
		v := put(t, s, p)
		if v <= last {
			t.Fatalf("write %d returned version %d after version %d", i, v, last)
		}
		last = v
		if got := getProject(t, s, p.Name); got.Version != v || got.Limits.MessagesPerMinute != i+1 {
			t.Fatalf("after write %d: version %d messages/minute %d, want %d and %d", i, got.Version, got.Limits.MessagesPerMinute, v, i+1)
		}
	}
}

func testProjectCAS(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := BasicProject("client-a")
	v1 := put(t, s, p)

	// Two administrators read version v1; the first write wins.
	a, b := getProject(t, s, p.Name), getProject(t, s, p.Name)
	a.Upstream.Port = 465
	v2 := put(t, s, a)
	b.Upstream.Port = 2525
	_, err := s.PutProject(ctx, b)
	wantErr(t, "PutProject at a stale version", err, store.ErrConflict)
	if got := getProject(t, s, p.Name); got.Version != v2 || got.Upstream.Port != 465 {
		t.Fatalf("after the conflict: version %d port %d, want %d and 465", got.Version, got.Upstream.Port, v2)
	}

	// A conditional write of a project that does not exist conflicts too.
	ghost := BasicProject("ghost")
	ghost.Version = v1
	_, err = s.PutProject(ctx, ghost)
	wantErr(t, "PutProject at a version of a missing project", err, store.ErrConflict)
	_, err = s.Project(ctx, "ghost")
	wantErr(t, "Project after a refused write", err, store.ErrNotFound)

	// Version 0 replaces whatever is there.
	c := BasicProject("client-a")
	c.Upstream.Port = 25
	v3 := put(t, s, c)
	if v3 <= v2 {
		t.Fatalf("unconditional write returned version %d after %d", v3, v2)
	}
	if got := getProject(t, s, p.Name); got.Upstream.Port != 25 {
		t.Fatalf("unconditional write did not replace the project: port %d", got.Upstream.Port)
	}
}

func testProjectResultsAreCopies(t *testing.T, s store.Store) {
	put(t, s, BasicProject("client-a"))
	got := getProject(t, s, "client-a")
	got.Senders[0] = "changed@elsewhere.example"
	ps, err := s.Projects(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	ps[0].Senders[1] = "@elsewhere.example"
	sameProject(t, getProject(t, s, "client-a"), BasicProject("client-a"))
}

func testTokenRoundTrip(t *testing.T, s store.Store) {
	want := SampleToken("client-a")
	v := putToken(t, s, "client-a", want)
	got := getToken(t, s, "client-a")
	if got.Version != v {
		t.Errorf("Token().Version = %d, PutToken returned %d", got.Version, v)
	}
	sameToken(t, got, want)

	reauth := project.Token{State: project.TokenNeedsReauth, Reason: "AADSTS700082: the refresh token has expired", Version: v}
	v2 := putToken(t, s, "client-a", reauth)
	if v2 <= v {
		t.Fatalf("second token write returned version %d after %d", v2, v)
	}
	sameToken(t, getToken(t, s, "client-a"), reauth)
}

func testTokenCAS(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	tok := SampleToken("client-a")

	stale := tok
	stale.Version = 7
	_, err := s.PutToken(ctx, "client-a", stale)
	wantErr(t, "PutToken at a version of a missing record", err, store.ErrConflict)
	_, err = s.Token(ctx, "client-a")
	wantErr(t, "Token after a refused write", err, store.ErrNotFound)

	v1 := putToken(t, s, "client-a", tok)
	_, err = s.PutToken(ctx, "client-a", tok) // version 0: must not exist yet
	wantErr(t, "PutToken with version 0 over an existing record", err, store.ErrConflict)

	// Two sidecars refreshed from version v1; the first write wins, the second must re-read.
	first, second := tok, tok
	first.Version, second.Version = v1, v1
	first.RefreshToken = secret.New("rotated-by-first")
	second.RefreshToken = secret.New("rotated-by-second")
	v2 := putToken(t, s, "client-a", first)
	_, err = s.PutToken(ctx, "client-a", second)
	wantErr(t, "PutToken at a stale version", err, store.ErrConflict)
	got := getToken(t, s, "client-a")
	if got.Version != v2 || !got.RefreshToken.Equal(first.RefreshToken) {
		t.Fatalf("after the conflict the record is version %d (want %d), with the first writer's refresh token: %v",
			got.Version, v2, got.RefreshToken.Equal(first.RefreshToken))
	}
}

func testDeleteRemovesToken(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	put(t, s, OAuthProject("client-a"))
	put(t, s, OAuthProject("client-b"))
	putToken(t, s, "client-a", SampleToken("client-a"))
	putToken(t, s, "client-b", SampleToken("client-b"))

	if err := s.DeleteProject(ctx, "client-a"); err != nil {
		t.Fatalf("DeleteProject: %v", err)
	}
	_, err := s.Project(ctx, "client-a")
	wantErr(t, "Project after delete", err, store.ErrNotFound)
	_, err = s.Token(ctx, "client-a")
	wantErr(t, "Token after delete", err, store.ErrNotFound)
	if names := listNames(t, s); !reflect.DeepEqual(names, []string{"client-b"}) {
		t.Fatalf("Projects after delete: %v, want [client-b]", names)
	}
	sameToken(t, getToken(t, s, "client-b"), SampleToken("client-b"))
	wantErr(t, "second DeleteProject", s.DeleteProject(ctx, "client-a"), store.ErrNotFound)
}

// A removed project stays as a tombstone carrying its senders and the time of removal, with no
// secret left in the project or its token record; adding it again replaces the tombstone.
func testRemoveLeavesTombstone(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := OAuthProject("client-a")
	put(t, s, p)
	put(t, s, BasicProject("client-b"))
	putToken(t, s, "client-a", SampleToken("client-a"))
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

	tomb, err := store.Remove(ctx, s, s, "client-a", at)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	got := getProject(t, s, "client-a")
	if !got.Removed.Equal(at) || got.Enabled || !reflect.DeepEqual(got.Senders, p.Senders) || got.Version != tomb.Version {
		t.Fatalf("after Remove: %+v, want a disabled tombstone removed at %v with senders %v", got, at, p.Senders)
	}
	if got.Auth.Type != project.AuthNone || got.Auth.OAuth != nil || !got.Auth.Password.IsZero() {
		t.Errorf("the tombstone keeps credentials: %+v", got.Auth)
	}
	if names := listNames(t, s); !reflect.DeepEqual(names, []string{"client-a", "client-b"}) {
		t.Errorf("Projects after Remove: %v, want the tombstone listed", names)
	}
	tok := getToken(t, s, "client-a")
	if !tok.AccessToken.IsZero() || !tok.RefreshToken.IsZero() || tok.State != project.TokenNeedsReauth {
		t.Errorf("the token record keeps its secrets after Remove: state %s, access %v, refresh %v",
			tok.State, !tok.AccessToken.IsZero(), !tok.RefreshToken.IsZero())
	}
	if again, err := store.Remove(ctx, s, s, "client-a", at.Add(time.Hour)); err != nil || !again.Removed.Equal(at) {
		t.Errorf("second Remove: %+v, %v; want the first tombstone unchanged", again, err)
	}

	// Adding it again is a check-and-set on the tombstone.
	p.Version = got.Version
	put(t, s, p)
	if back := getProject(t, s, "client-a"); back.IsRemoved() || back.Auth.Type != project.AuthOAuth2 {
		t.Errorf("added again: %+v", back)
	}
	_, err = store.Remove(ctx, s, s, "nope", at)
	wantErr(t, "Remove of a missing project", err, store.ErrNotFound)
}

func testRecreateAfterDelete(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	v1 := put(t, s, BasicProject("client-a"))
	tv1 := putToken(t, s, "client-a", SampleToken("client-a"))
	if err := s.DeleteProject(ctx, "client-a"); err != nil {
		t.Fatal(err)
	}
	p := BasicProject("client-a")
	p.Upstream.Port = 465
	if v := put(t, s, p); v <= v1 {
		t.Errorf("re-created project has version %d, not above %d: a writer holding the old version could overwrite it", v, v1)
	}
	sameProject(t, getProject(t, s, "client-a"), p)

	// A token written from a version read before the delete must not land.
	stale := SampleToken("client-a")
	stale.Version = tv1
	_, err := s.PutToken(ctx, "client-a", stale)
	wantErr(t, "PutToken at a version read before the delete", err, store.ErrConflict)
	putToken(t, s, "client-a", SampleToken("client-a"))
}

func testRecordsAreIndependent(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	names := []string{"a", "b.example", "c_1", "d-2"}
	for _, n := range names {
		put(t, s, BasicProject(n))
	}
	putToken(t, s, "b.example", SampleToken("b.example"))
	for _, n := range names {
		sameProject(t, getProject(t, s, n), BasicProject(n))
	}
	for _, n := range []string{"a", "c_1", "d-2"} {
		_, err := s.Token(ctx, n)
		wantErr(t, fmt.Sprintf("Token(%s)", n), err, store.ErrNotFound)
	}
	if got := listNames(t, s); !reflect.DeepEqual(got, names) {
		t.Fatalf("Projects: %v, want %v", got, names)
	}
}

// testConcurrentTokenUpdates runs read-modify-write loops that retry on ErrConflict, as the token
// broker does; no increment may be lost.
func testConcurrentTokenUpdates(t *testing.T, s store.Store) {
	const workers, each, maxAttempts = 4, 5, 1000
	ctx := ctxFor(t)
	putToken(t, s, "client-a", project.Token{State: project.TokenOK, Reason: "0"})
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				for attempt := 0; ; attempt++ {
					if attempt == maxAttempts {
						errs <- fmt.Errorf("no increment landed in %d attempts: every write conflicts", maxAttempts)
						return
					}
					tok, err := s.Token(ctx, "client-a")
					if err != nil {
						errs <- err
						return
					}
					var n int
					fmt.Sscan(tok.Reason, &n)
					tok.Reason = fmt.Sprint(n + 1)
					_, err = s.PutToken(ctx, "client-a", tok)
					if err == nil {
						break
					}
					if !errors.Is(err, store.ErrConflict) {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := getToken(t, s, "client-a").Reason; got != fmt.Sprint(workers*each) {
		t.Fatalf("counter is %s after %d increments: updates were lost", got, workers*each)
	}
}
