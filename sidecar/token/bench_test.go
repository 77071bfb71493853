package token_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

// benchStore holds one token record and counts reads.
type benchStore struct {
	mu    sync.Mutex
	rec   project.Token
	reads int
}

func (s *benchStore) Token(_ context.Context, name string) (project.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.rec.Version == 0 {
		return project.Token{}, store.ErrNotFound
	}
	return s.rec, nil
}

func (s *benchStore) PutToken(_ context.Context, _ string, t project.Token) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.Version != s.rec.Version {
		return 0, store.ErrConflict
	}
	t.Version++
	s.rec = t
	return t.Version, nil
}

// BenchmarkCredentialCacheHit is the broker's answer for a project whose token is cached and
// fresh: what every delivery of an OAuth project costs in steady state. It must read no store.
func BenchmarkCredentialCacheHit(b *testing.B) {
	st := &benchStore{rec: project.Token{
		AccessToken: secret.New("access-token"), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour),
		RefreshToken: secret.New("refresh-token"), Account: "noreply@client.example", State: project.TokenOK, Version: 1,
	}}
	br := token.New(token.Options{Store: st})
	b.Cleanup(br.Close)
	p := project.Project{
		Name: "client", Enabled: true,
		Auth: project.Auth{Type: project.AuthOAuth2, Username: "noreply@client.example", OAuth: &project.OAuth{
			Provider: "generic", ClientID: "id", TokenURL: "http://127.0.0.1:1/token", AuthURL: "http://127.0.0.1:1/auth",
		}},
	}
	ctx := context.Background()
	if _, err := br.Credential(ctx, p); err != nil { // loads the record once
		b.Fatal(err)
	}
	reads := st.reads
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.Credential(ctx, p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if st.reads != reads {
		b.Fatalf("%d store reads on cache hits", st.reads-reads)
	}
}
