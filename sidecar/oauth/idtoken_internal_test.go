package oauth

import (
	"errors"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
)

func TestMicrosoftIssuer(t *testing.T) {
	t.Parallel()
	const tid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	tests := []struct {
		name, tenant string
		c            Claims
		wantErr      string
	}{
		{"tenant domain, any tid", "contoso.onmicrosoft.com",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"organizations", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"tenant id matches", tid,
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"tenant id differs", "00000000-0000-0000-0000-000000000001",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, "not the configured tenant"},
		{"issuer of another tenant than tid", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0", TenantID: tid}, "issuer"},
		{"v1 issuer", "organizations",
			Claims{Issuer: "https://sts.windows.net/" + tid + "/", TenantID: tid}, "issuer"},
		{"no tid", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0"}, "no tid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := NewProvider(&project.OAuth{Provider: Microsoft, Tenant: tc.tenant, ClientID: "cid"}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			c := tc.c
			err = p.checkIssuer(&c)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("checkIssuer = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	t.Parallel()
	const tid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	tests := []struct {
		name, provider string
		c              Claims
		want           Identity
		wantErr        string
	}{
		{"microsoft: preferred_username, oid and tid", Microsoft,
			Claims{Subject: "pairwise", ObjectID: "oid-1", TenantID: tid, PreferredUsername: "box@client.example", Email: "other@client.example", EmailVerified: true},
			Identity{Mailbox: "box@client.example", ID: "oid-1", TenantID: tid}, ""},
		{"microsoft: upn", Microsoft,
			Claims{Subject: "s", ObjectID: "oid-1", TenantID: tid, UPN: "box@client.example"},
			Identity{Mailbox: "box@client.example", ID: "oid-1", TenantID: tid}, ""},
		{"microsoft: the email claim is never the mailbox", Microsoft,
			Claims{Subject: "s", ObjectID: "oid-1", TenantID: tid, Email: "box@client.example", EmailVerified: true},
			Identity{}, "the email claim is not trusted"},
		{"microsoft: sub when there is no oid", Microsoft,
			Claims{Subject: "s", TenantID: tid, PreferredUsername: "box@client.example"},
			Identity{Mailbox: "box@client.example", ID: "s", TenantID: tid}, ""},
		{"google: verified email and sub", Google,
			Claims{Subject: "1234", Email: "box@client.example", EmailVerified: true, TenantID: "ignored"},
			Identity{Mailbox: "box@client.example", ID: "1234"}, ""},
		{"google: unverified email", Google,
			Claims{Subject: "1234", Email: "box@client.example"}, Identity{}, "not verified"},
		{"generic: preferred_username is not enough", Generic,
			Claims{Subject: "1234", PreferredUsername: "box@client.example"}, Identity{}, "no email claim"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := tc.c.Identity(tc.provider)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Identity = %+v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Identity = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestCheckAccount(t *testing.T) {
	t.Parallel()
	const box = "box@client.example"
	me := Identity{Mailbox: "Box@Client.example", ID: "oid-1", TenantID: "t-1"}
	tests := []struct {
		name     string
		id       Identity
		prev     project.Token
		wantKind string
	}{
		{"first sign-in", me, project.Token{}, ""},
		{"another mailbox", Identity{Mailbox: "x@client.example", ID: "oid-2", TenantID: "t-1"}, project.Token{}, OtherMailbox},
		{"same account again", me, project.Token{Account: box, AccountID: "oid-1", TenantID: "t-1"}, ""},
		{"record from before ids were kept", me, project.Token{Account: box}, ""},
		{"same address, another tenant", Identity{Mailbox: box, ID: "oid-1", TenantID: "t-2"}, project.Token{Account: box, AccountID: "oid-1", TenantID: "t-1"}, OtherTenant},
		{"same address, another account", Identity{Mailbox: box, ID: "oid-9", TenantID: "t-1"}, project.Token{Account: box, AccountID: "oid-1", TenantID: "t-1"}, OtherAccount},
		{"the project's mailbox changed since", Identity{Mailbox: box, ID: "oid-9", TenantID: "t-2"}, project.Token{Account: "old@client.example", AccountID: "oid-1", TenantID: "t-1"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := CheckAccount(tc.id, box, tc.prev)
			var ae *AccountError
			switch {
			case tc.wantKind == "" && err != nil:
				t.Fatalf("CheckAccount = %v, want nil", err)
			case tc.wantKind != "" && (!errors.As(err, &ae) || ae.Kind != tc.wantKind):
				t.Fatalf("CheckAccount = %v, want kind %s", err, tc.wantKind)
			}
		})
	}
}
