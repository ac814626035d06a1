-- 13-fingerprint-schemes: fingerprints are compared when both sides have one,
-- except two automatic fingerprints of different schemes (v<N>: and 40 hex
-- digits), which cannot be compared: a rolling upgrade of the client's
-- fingerprint scheme raises no false mismatch.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(9);

\set v1a '''v1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'''
\set v1b '''v1:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'''
\set v2a '''v2:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'''
\set v2b '''v2:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'''

select fence as f from sentinel.acquire_v1('fp', 'k', 'old', 60000, fingerprint => :v1a) \gset
select is((sentinel.complete_v1('fp', 'k', :f, '{"charged": 100}')).outcome, 'recorded', 'recorded under a v1 fingerprint');

select is((sentinel.acquire_v1('fp', 'k', 'new', 60000, fingerprint => :v2a)).outcome, 'completed',
          'a v2 fingerprint is not compared with a v1 one: replayed');
select is((sentinel.acquire_v1('fp', 'k', 'new', 60000, fingerprint => :v2b)).outcome, 'completed',
          'whatever its hash');
select is((sentinel.acquire_v1('fp', 'k', 'old', 60000, fingerprint => :v1b)).outcome, 'mismatch',
          'two v1 fingerprints are compared');
select is((sentinel.acquire_v1('fp', 'k', 'old', 60000, fingerprint => :v1a)).outcome, 'completed',
          'the same v1 fingerprint replays');
select is((sentinel.acquire_v1('fp', 'k', 'any', 60000, fingerprint => 'charge:100')).outcome, 'mismatch',
          'a fingerprint the caller chose is compared with an automatic one');
select is((sentinel.acquire_v1('fp', 'k', 'any', 60000)).outcome, 'completed', 'no fingerprint: replayed');

select fence as g from sentinel.acquire_v1('fp', 'j', 'new', 60000, fingerprint => :v2a) \gset
select is((sentinel.complete_v1('fp', 'j', :g, '1')).outcome, 'recorded', 'recorded under a v2 fingerprint');
select is((sentinel.acquire_v1('fp', 'j', 'new', 60000, fingerprint => :v2b)).outcome, 'mismatch',
          'two v2 fingerprints are compared');

select * from finish();
rollback;
