package project

import (
	"bytes"
	"testing"
)

// FuzzUnmarshalStored feeds project and token records as an administrator (or anyone who can write
// the store) may write them: decoding and validating never panic, and a record that decodes
// survives a round trip unchanged.
func FuzzUnmarshalStored(f *testing.F) {
	f.Add([]byte(`{"name":"client-a","enabled":true,"senders":["noreply@client-a.example","@client-a.example"],` +
		`"upstream":{"host":"smtp.office365.com","port":587,"tls":"starttls"},` +
		`"auth":{"type":"basic","username":"noreply@client-a.example","password":"pw"}}`))
	f.Add([]byte(`{"name":"o","auth":{"type":"oauth2","oauth":{"provider":"microsoft","tenant":"t","client_id":"c","client_secret":"s"}}}`))
	f.Add([]byte(`{"access_token":"at","refresh_token":"rt","state":"ok"}`))
	f.Add([]byte(`{"name":"x","unknown":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := UnmarshalStored(b); err == nil {
			_ = p.Validate()
			out, err := MarshalStored(p)
			if err != nil {
				t.Fatalf("a decoded project does not encode: %v", err)
			}
			again, err := UnmarshalStored(out)
			if err != nil {
				t.Fatalf("an encoded project does not decode: %v\n%s", err, out)
			}
			if out2, _ := MarshalStored(again); !bytes.Equal(out, out2) {
				t.Fatalf("the round trip changed the project:\n%s\n%s", out, out2)
			}
		}
		if tok, err := UnmarshalStoredToken(b); err == nil {
			out, err := MarshalStoredToken(tok)
			if err != nil {
				t.Fatalf("a decoded token does not encode: %v", err)
			}
			if _, err := UnmarshalStoredToken(out); err != nil {
				t.Fatalf("an encoded token does not decode: %v\n%s", err, out)
			}
		}
	})
}
