package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
)

// fakeProvider records what reached it and answers with the configured functions.
type fakeProvider struct {
	credential func(context.Context, Request) (Credential, error)
	rejected   func(context.Context, RejectedRequest) error

	mu          sync.Mutex
	gotRequest  Request
	gotRejected RejectedRequest
}

func (f *fakeProvider) Credential(ctx context.Context, req Request) (Credential, error) {
	f.mu.Lock()
	f.gotRequest = req
	f.mu.Unlock()
	return f.credential(ctx, req)
}

func (f *fakeProvider) Rejected(ctx context.Context, req RejectedRequest) error {
	f.mu.Lock()
	f.gotRejected = req
	f.mu.Unlock()
	if f.rejected == nil {
		return nil
	}
	return f.rejected(ctx, req)
}

// inProcess serves impl through go-plugin's gRPC machinery in this process and returns the
// host-side Provider talking to it.
func inProcess(t *testing.T, impl Provider) Provider {
	t.Helper()
	client, _ := goplugin.TestPluginGRPCConn(t, false, pluginSet(impl))
	t.Cleanup(func() { _ = client.Close() })
	raw, err := client.Dispense(PluginName)
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	p, ok := raw.(Provider)
	if !ok {
		t.Fatalf("dispensed %T, not a Provider", raw)
	}
	return p
}

const testSecret = "s3cr3t-value-that-must-never-be-printed"

func TestCredentialRoundTrip(t *testing.T) {
	t.Parallel()
	expiry := time.Unix(1_900_000_000, 0)
	tests := []struct {
		name string
		req  Request
		give Credential
		want Credential
	}{
		{
			name: "plain with expiry and config",
			req: Request{
				Project:      "acme",
				Username:     "noreply@acme.example",
				Config:       map[string]string{"file": "/etc/x.json", "vault": "corp-kms"},
				ForceRefresh: true,
			},
			give: Credential{Mechanism: MechanismPlain, Username: "svc-acme", Secret: NewSecret(testSecret), Expiry: expiry},
			want: Credential{Mechanism: MechanismPlain, Username: "svc-acme", Secret: NewSecret(testSecret), Expiry: expiry},
		},
		{
			name: "xoauth2 without expiry",
			req:  Request{Project: "globex", Username: "noreply@globex.example"},
			give: Credential{Mechanism: MechanismXOAuth2, Username: "noreply@globex.example", Secret: NewSecret("eyJ-token")},
			want: Credential{Mechanism: MechanismXOAuth2, Username: "noreply@globex.example", Secret: NewSecret("eyJ-token")},
		},
		{
			name: "empty username takes the request's, lower-case mechanism is normalised",
			req:  Request{Project: "initech", Username: "tps@initech.example"},
			give: Credential{Mechanism: "login", Secret: NewSecret("pw")},
			want: Credential{Mechanism: MechanismLogin, Username: "tps@initech.example", Secret: NewSecret("pw")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := &fakeProvider{credential: func(context.Context, Request) (Credential, error) { return tc.give, nil }}
			got, err := inProcess(t, fake).Credential(context.Background(), tc.req)
			if err != nil {
				t.Fatalf("Credential: %v", err)
			}
			if got.Mechanism != tc.want.Mechanism || got.Username != tc.want.Username ||
				got.Secret.Reveal() != tc.want.Secret.Reveal() || !got.Expiry.Equal(tc.want.Expiry) {
				t.Errorf("credential = {%s %s secret-equal=%v %v}, want {%s %s %v}",
					got.Mechanism, got.Username, got.Secret.Reveal() == tc.want.Secret.Reveal(), got.Expiry,
					tc.want.Mechanism, tc.want.Username, tc.want.Expiry)
			}
			fake.mu.Lock()
			r := fake.gotRequest
			fake.mu.Unlock()
			if r.Project != tc.req.Project || r.Username != tc.req.Username ||
				r.ForceRefresh != tc.req.ForceRefresh || !maps.Equal(r.Config, tc.req.Config) {
				t.Errorf("provider got %+v, want %+v", r, tc.req)
			}
		})
	}
}

func TestRejectedRoundTrip(t *testing.T) {
	t.Parallel()
	fake := &fakeProvider{}
	req := RejectedRequest{
		Project:   "acme",
		Username:  "noreply@acme.example",
		Config:    map[string]string{"file": "/etc/x.json"},
		Mechanism: MechanismXOAuth2,
		Reply:     "535 5.7.3 Authentication unsuccessful",
	}
	if err := inProcess(t, fake).Rejected(context.Background(), req); err != nil {
		t.Fatalf("Rejected: %v", err)
	}
	fake.mu.Lock()
	got := fake.gotRejected
	fake.mu.Unlock()
	if got.Project != req.Project || got.Username != req.Username || got.Mechanism != req.Mechanism ||
		got.Reply != req.Reply || !maps.Equal(got.Config, req.Config) {
		t.Errorf("provider got %+v, want %+v", got, req)
	}
}

func TestErrorsCrossTheBoundary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		give       error
		wantReauth string // expected *NeedsReauthError reason, if any
		wantTemp   string // expected *TemporaryError reason, if any
	}{
		{name: "needs reauth", give: &NeedsReauthError{Reason: "refresh token revoked"}, wantReauth: "refresh token revoked"},
		{name: "wrapped needs reauth", give: fmt.Errorf("asking kms: %w", &NeedsReauthError{Reason: "hsm locked"}), wantReauth: "hsm locked"},
		{name: "temporary", give: &TemporaryError{Reason: "kms unreachable"}, wantTemp: "kms unreachable"},
		{name: "any other error is temporary", give: errors.New("disk on fire"), wantTemp: "disk on fire"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := &fakeProvider{
				credential: func(context.Context, Request) (Credential, error) { return Credential{}, tc.give },
				rejected:   func(context.Context, RejectedRequest) error { return tc.give },
			}
			p := inProcess(t, fake)
			_, credErr := p.Credential(context.Background(), Request{Project: "acme"})
			rejErr := p.Rejected(context.Background(), RejectedRequest{Project: "acme"})
			for method, err := range map[string]error{"Credential": credErr, "Rejected": rejErr} {
				var reauth *NeedsReauthError
				var temp *TemporaryError
				switch {
				case tc.wantReauth != "":
					if !errors.As(err, &reauth) || reauth.Reason != tc.wantReauth {
						t.Errorf("%s error = %#v, want *NeedsReauthError{%q}", method, err, tc.wantReauth)
					}
					if !IsNeedsReauth(err) {
						t.Errorf("%s: IsNeedsReauth(%v) = false", method, err)
					}
				default:
					if !errors.As(err, &temp) || temp.Reason != tc.wantTemp {
						t.Errorf("%s error = %#v, want *TemporaryError{%q}", method, err, tc.wantTemp)
					}
					if IsNeedsReauth(err) {
						t.Errorf("%s: IsNeedsReauth(%v) = true", method, err)
					}
				}
			}
		})
	}
}

func TestUnusableCredentialIsAnError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give Credential
		want string
	}{
		{name: "unknown mechanism", give: Credential{Mechanism: "CRAM-MD5", Username: "u", Secret: NewSecret(testSecret)}, want: "unknown mechanism"},
		{name: "empty secret", give: Credential{Mechanism: MechanismPlain, Username: "u"}, want: "empty secret"},
		{name: "no username anywhere", give: Credential{Mechanism: MechanismPlain, Secret: NewSecret(testSecret)}, want: "empty username"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := &fakeProvider{credential: func(context.Context, Request) (Credential, error) { return tc.give, nil }}
			_, err := inProcess(t, fake).Credential(context.Background(), Request{Project: "acme"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("error reveals the secret: %v", err)
			}
			if IsNeedsReauth(err) {
				t.Errorf("an unusable answer is an operational fault, got %v", err)
			}
		})
	}
}

// blockingProvider waits for its context to end and reports what it saw.
type seen struct {
	hasDeadline bool
	deadline    time.Time
	err         error
}

func blockingProvider(entered chan<- struct{}, saw chan<- seen) *fakeProvider {
	wait := func(ctx context.Context) error {
		close(entered)
		<-ctx.Done()
		d, ok := ctx.Deadline()
		saw <- seen{hasDeadline: ok, deadline: d, err: ctx.Err()}
		return ctx.Err()
	}
	return &fakeProvider{
		credential: func(ctx context.Context, _ Request) (Credential, error) { return Credential{}, wait(ctx) },
		rejected:   func(ctx context.Context, _ RejectedRequest) error { return wait(ctx) },
	}
}

func TestContextCrossesTheBoundary(t *testing.T) {
	t.Parallel()
	calls := map[string]func(Provider, context.Context) error{
		"Credential": func(p Provider, ctx context.Context) error {
			_, err := p.Credential(ctx, Request{Project: "acme"})
			return err
		},
		"Rejected": func(p Provider, ctx context.Context) error {
			return p.Rejected(ctx, RejectedRequest{Project: "acme"})
		},
	}
	for method, call := range calls {
		t.Run(method+"/deadline", func(t *testing.T) {
			t.Parallel()
			entered, saw := make(chan struct{}), make(chan seen, 1)
			p := inProcess(t, blockingProvider(entered, saw))
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			hostDeadline, _ := ctx.Deadline()
			err := call(p, ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error = %v, want context.DeadlineExceeded", err)
			}
			s := <-saw
			if !s.hasDeadline {
				t.Fatal("the provider's context had no deadline")
			}
			if s.deadline.After(hostDeadline.Add(time.Second)) {
				t.Errorf("provider deadline %v is later than the host's %v", s.deadline, hostDeadline)
			}
			if s.err == nil {
				t.Error("the provider's context did not end")
			}
		})
		t.Run(method+"/cancel", func(t *testing.T) {
			t.Parallel()
			entered, saw := make(chan struct{}), make(chan seen, 1)
			p := inProcess(t, blockingProvider(entered, saw))
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				<-entered
				cancel()
			}()
			err := call(p, ctx)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error = %v, want context.Canceled", err)
			}
			if s := <-saw; !errors.Is(s.err, context.Canceled) {
				t.Errorf("provider's context error = %v, want context.Canceled", s.err)
			}
		})
	}
}

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	c := Credential{Mechanism: MechanismPlain, Username: "u", Secret: NewSecret(testSecret)}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "credential", c, "secret", c.Secret)
	text, _ := c.Secret.MarshalText()
	js, _ := c.Secret.MarshalJSON()
	for name, out := range map[string]string{
		"%v":  fmt.Sprintf("%v", c),
		"%+v": fmt.Sprintf("%+v", c),
		"%#v": fmt.Sprintf("%#v", c),
		//lint:ignore S1025 the test is of the %s verb itself
		"%s":   fmt.Sprintf("%s", c.Secret),
		"slog": logs.String(),
		"text": string(text),
		"json": string(js),
	} {
		if strings.Contains(out, testSecret) {
			t.Errorf("%s reveals the secret: %s", name, out)
		}
	}
	if c.Secret.Reveal() != testSecret {
		t.Error("Reveal lost the value")
	}
}
