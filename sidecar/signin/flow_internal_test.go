package signin

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFlowCookie(t *testing.T) {
	t.Parallel()
	key := make([]byte, KeySize)
	s := newSealer(key)
	now := time.Unix(1_800_000_000, 0)
	f := flow{State: "state-1", Verifier: "verifier-1", Project: "client-a", Mailbox: "a@client.example", Nonce: "n", Expiry: now.Add(15 * time.Minute).Unix()}
	name, value := s.seal(f)
	_, other := s.seal(flow{State: "state-2", Verifier: "v2", Expiry: f.Expiry})
	if name != cookieName("state-1") || !strings.HasPrefix(name, cookiePrefix) {
		t.Fatalf("cookie name %q", name)
	}
	if strings.Contains(value, "verifier-1") || strings.Contains(value, "client-a") {
		t.Fatal("the cookie shows what it carries")
	}
	changed := "A" + value[1:]
	if value[0] == 'A' {
		changed = "B" + value[1:]
	}
	otherKey := make([]byte, KeySize)
	otherKey[0] = 1
	_, foreign := newSealer(otherKey).seal(f)
	tests := []struct {
		name, state, value string
		now                time.Time
		want               error
	}{
		{"opens", "state-1", value, now, nil},
		{"another state", "state-2", value, now, errNoFlow},
		{"another flow's cookie under this state's name", "state-1", other, now, errNoFlow},
		{"changed", "state-1", changed, now, errNoFlow},
		{"another key", "state-1", foreign, now, errNoFlow},
		{"not base64", "state-1", "%%%", now, errNoFlow},
		{"empty", "state-1", "", now, errNoFlow},
		{"expired", "state-1", value, now.Add(15 * time.Minute), errFlowExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.open(tc.state, tc.value, tc.now)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("open = %v, want %v", err, tc.want)
			}
			if tc.want == nil && got != f {
				t.Fatalf("opened %+v, sealed %+v", got, f)
			}
		})
	}
}

// FuzzFlowCookie feeds the callback's state parameter and flow cookie: opening never panics, and
// only a cookie the key sealed for that state opens under it. (Each fuzzing process seals its own
// cookie, with its own random nonce, so the check is on what opens, not on the bytes.)
func FuzzFlowCookie(f *testing.F) {
	key := make([]byte, KeySize)
	s := newSealer(key)
	now := time.Unix(1_800_000_000, 0)
	sealed := flow{State: "state-1", Verifier: "verifier-1", Project: "client-a", Mailbox: "a@client.example", Nonce: "n", Expiry: now.Add(15 * time.Minute).Unix()}
	_, value := s.seal(sealed)
	f.Add("state-1", value)
	f.Add("state-1", "")
	f.Add("", "%%%")
	f.Add("state-2", value[:len(value)/2])
	f.Fuzz(func(t *testing.T, state, v string) {
		got, err := s.open(state, v, now)
		if err != nil {
			return
		}
		if state != sealed.State || got != sealed {
			t.Fatalf("opened %+v from state %q and cookie %q, which were not sealed together", got, state, v)
		}
	})
}
