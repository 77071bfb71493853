package vaulttest_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/postern/postern/vault/vaulttest"
)

func apiClient(t *testing.T, srv *vaulttest.Server, tok string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(tok)
	return c
}

func status(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func TestKVBehavesLikeVault(t *testing.T) {
	t.Parallel()
	srv := vaulttest.New(t, vaulttest.Options{MaxVersions: 3})
	c := apiClient(t, srv, srv.RootToken)
	kv := c.KVv2("secret")
	ctx := t.Context()

	for i := range 5 {
		if _, err := kv.Put(ctx, "a/b", map[string]any{"i": i}, api.WithCheckAndSet(i)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	md, err := kv.GetMetadata(ctx, "a/b")
	if err != nil || md.CurrentVersion != 5 || md.OldestVersion != 3 || len(md.Versions) != 3 {
		t.Fatalf("metadata after 5 writes with 3 kept: %+v, %v", md, err)
	}
	if _, err := kv.Put(ctx, "a/b", map[string]any{"i": 9}, api.WithCheckAndSet(4)); status(err) != 400 {
		t.Fatalf("stale check-and-set: %v, want a 400", err)
	}
	if _, err := kv.Patch(ctx, "a/b", map[string]any{"j": "x"}); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Get(ctx, "a/b")
	if err != nil || fmt.Sprint(s.Data["i"]) != "4" || s.Data["j"] != "x" || s.VersionMetadata.Version != 6 {
		t.Fatalf("after a patch: %+v, %v", s, err)
	}
	if err := kv.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if s, err := kv.Get(ctx, "a/b"); err != nil || s.Data != nil || s.VersionMetadata.DeletionTime.IsZero() {
		t.Fatalf("Get of a deleted version: %+v, %v", s, err)
	}
	if err := kv.Undelete(ctx, "a/b", []int{6}); err != nil {
		t.Fatal(err)
	}
	if s, err := kv.Get(ctx, "a/b"); err != nil || s.Data == nil {
		t.Fatalf("Get after undelete: %+v, %v", s, err)
	}
	kv.Put(ctx, "a/c/d", map[string]any{"x": "y"})
	l, err := c.Logical().List("secret/metadata/a")
	if err != nil || fmt.Sprint(l.Data["keys"]) != "[b c/]" {
		t.Fatalf("list: %v, %v", l, err)
	}
	if l, err := c.Logical().List("secret/metadata/none"); err != nil || l != nil {
		t.Fatalf("list of nothing: %v, %v", l, err)
	}
	if st := srv.Stats(); st.Writes != 8 || st.Reads != 4 || st.Lists != 2 || st.Deletes != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestTokensAndPolicies(t *testing.T) {
	t.Parallel()
	srv := vaulttest.New(t, vaulttest.Options{})
	tok := srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, MaxTTL: 90 * time.Minute, Renewable: true, Policy: &vaulttest.Policy{Rules: []vaulttest.Rule{
		{Path: "secret/data/ro/*", Capabilities: []string{"read"}},
		{Path: "secret/data/rw/*", Capabilities: []string{"create", "read", "update"}},
	}}})
	srv.Put("ro/x", map[string]any{"a": "b"})
	c := apiClient(t, srv, tok)
	if _, err := c.Logical().Read("secret/data/ro/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("secret/data/ro/x", map[string]any{"data": map[string]any{}}); status(err) != 403 {
		t.Fatalf("write to a read-only path: %v", err)
	}
	if _, err := c.Logical().Write("secret/data/rw/x", map[string]any{"data": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	s, err := c.Auth().Token().RenewSelf(7200)
	if err != nil || s.Auth.LeaseDuration != 5400 {
		t.Fatalf("renewal capped by the max TTL: %+v, %v", s, err)
	}
	srv.Revoke(tok)
	if _, err := c.Auth().Token().LookupSelf(); status(err) != 403 {
		t.Fatalf("lookup of a revoked token: %v", err)
	}

	srv.SetMode(vaulttest.Sealed)
	if _, err := apiClient(t, srv, srv.RootToken).Logical().Read("secret/data/ro/x"); status(err) != 503 {
		t.Fatalf("read while sealed: %v", err)
	}
	srv.SetMode(vaulttest.Dropping)
	if _, err := apiClient(t, srv, srv.RootToken).Logical().Read("secret/data/ro/x"); err == nil || status(err) != 0 {
		t.Fatalf("read while dropping connections: %v", err)
	}
	srv.SetMode(vaulttest.Up)
	if _, err := apiClient(t, srv, srv.RootToken).Logical().Read("secret/data/ro/x"); err != nil {
		t.Fatal(err)
	}
}
