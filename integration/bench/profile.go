package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Profile is a CPU profile of Postern taken while path A carried load.
type Profile struct {
	Size        int     `json:"size_bytes"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	Messages    int     `json:"messages"`
	// File is the profile (pprof format) beside results.json; `go tool pprof -top <file>` reads it.
	File string `json:"file"`
}

// ProfilePostern records Postern's CPU profile (debug.pprof) for d while path A relays messages
// of size bytes at concurrency conc, and writes it to out/postern-cpu-<size>.pprof.
func (rl *Relay) ProfilePostern(ctx context.Context, out string, size, conc, count int, d time.Duration) (Profile, error) {
	p := Profile{Size: size, Concurrency: conc, Seconds: d.Seconds(), Messages: count,
		File: fmt.Sprintf("postern-cpu-%s.pprof", sizeLabel(size))}
	if err := rl.SetConcurrency(ctx, conc); err != nil {
		return p, err
	}
	type fetched struct {
		b   []byte
		err error
	}
	got := make(chan fetched, 1)
	go func() {
		b, err := rl.fetchProfile(ctx, d)
		got <- fetched{b, err}
	}()
	if _, err := rl.Measure(ctx, PathPostern, size, conc, count, 0); err != nil {
		return p, err
	}
	f := <-got
	if f.err != nil {
		return p, f.err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return p, err
	}
	return p, os.WriteFile(filepath.Join(out, p.File), f.b, 0o644)
}

func (rl *Relay) fetchProfile(ctx context.Context, d time.Duration) ([]byte, error) {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", rl.Postern.AdminAddr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if rl.Postern.ReadToken != "" {
		// The admin listener's debug pages need the read token like its status pages.
		req.Header.Set("Authorization", "Bearer "+rl.Postern.ReadToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("profiling postern: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("profiling postern: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("profiling postern: %s: %s", resp.Status, b)
	}
	return b, nil
}
