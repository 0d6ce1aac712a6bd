//! Property test against a plain sequential model.
//!
//! The model is a list of every (tag, value) that was inserted with a token no covering
//! invalidation has overtaken, minus what later invalidations covered. It knows nothing of sets,
//! ways, generations or encodings; its coverage rules are written out again here from the specs'
//! words rather than shared with the cache. After every operation:
//! * whatever the cache returns is a value the model still holds for a matching tag (never stale,
//!   never made up);
//! * the cache never stores an insert the model refuses (the token rule);
//! * an insert the cache reports stored is found by a lookup right after it.

use proptest::prelude::*;

use crate::*;

#[derive(Clone, Debug)]
enum Op {
    Token,
    /// Insert with the token taken `age` tokens ago (0: a fresh one).
    Insert {
        tag: Tag,
        age: usize,
    },
    Lookup(Tag),
    Invalidate(Invalidation),
}

fn pasid() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(1)),
        Just(Some(PASID_MAX))
    ]
}

fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![Just(Stage::First), Just(Stage::Second), Just(Stage::Nested)]
}

fn translation_tag() -> impl Strategy<Value = Tag> {
    (
        0u16..4,
        pasid(),
        prop_oneof![Just(0u8), Just(1), Just(3), Just(9)],
        0u64..1024,
    )
        .prop_map(|(d, p, size, page)| Tag::translation(d, p, page & !((1 << size) - 1), size))
}

fn psc_tag() -> impl Strategy<Value = Tag> {
    (
        0u16..4,
        pasid(),
        stage(),
        1u8..4,
        prop_oneof![Just(0u8), Just(9)],
        0u64..1024,
    )
        .prop_map(|(d, p, st, level, size, page)| {
            Tag::paging_structure(d, p, st, level, page & !((1 << size) - 1), size)
        })
}

fn context_tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        (0u16..12, 0u16..4).prop_map(|(sid, d)| Tag::context(sid, d)),
        (0u16..12, 0u16..4).prop_map(|(sid, d)| Tag::device_table(sid, d)),
        (0u16..4, 0u32..3).prop_map(|(d, p)| Tag::pasid_entry(d, p)),
    ]
}

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![4 => translation_tag(), 2 => psc_tag(), 2 => context_tag()]
}

/// A lookup probe: a tag whose page may be anywhere inside a span.
fn probe() -> impl Strategy<Value = Tag> {
    (tag(), 0u64..1024).prop_map(|(t, page)| {
        if t.kind.is_translation_type() {
            Tag { page, size: 0, ..t }
        } else {
            t
        }
    })
}

fn invalidation() -> impl Strategy<Value = Invalidation> {
    prop_oneof![
        1 => Just(Invalidation::Global),
        2 => (0u16..4).prop_map(Invalidation::Domain),
        2 => (0u16..4, pasid()).prop_map(|(domain, pasid)| Invalidation::DomainPasid { domain, pasid }),
        4 => (
            0u16..4,
            prop_oneof![Just(PasidMatch::Any), pasid().prop_map(PasidMatch::Exactly)],
            0u64..1024,
            0u8..11,
            any::<bool>(),
        )
            .prop_map(|(domain, pasid, page, am, ih)| {
                Invalidation::Range(PageRange::vtd(domain, pasid, page << 12, am, ih).unwrap())
            }),
        2 => (0u16..12, 0u8..4).prop_map(|(sid, fm)| {
            Invalidation::Source(SourceSelector::vtd(sid, fm).unwrap())
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Token),
        5 => (tag(), 0usize..4).prop_map(|(tag, age)| Op::Insert { tag, age }),
        5 => probe().prop_map(Op::Lookup),
        2 => invalidation().prop_map(Op::Invalidate),
    ]
}

fn config() -> impl Strategy<Value = CacheConfig> {
    (
        prop_oneof![Just(1usize), Just(2), Just(4), Just(16)],
        prop_oneof![Just(1usize), Just(2), Just(4)],
        prop_oneof![Just(1usize), Just(2), Just(1024)],
        prop_oneof![
            Just(Replacement::PseudoLru),
            any::<u64>().prop_map(|seed| Replacement::Random { seed })
        ],
    )
        .prop_map(|(sets, ways, slots, r)| {
            CacheConfig::new(sets, ways)
                .with_domain_slots(slots)
                .with_replacement(r)
        })
}

fn context_type(tag: &Tag) -> bool {
    matches!(tag.kind, EntryKind::Context | EntryKind::DeviceTable)
}

/// Whether a held entry answers a probe: same kind and identifying fields, span contains the
/// probe's page. Context and DTE entries are identified by source id alone.
fn answers(entry: &Tag, probe: &Tag) -> bool {
    if entry.kind != probe.kind {
        return false;
    }
    if context_type(entry) {
        return entry.source_id == probe.source_id;
    }
    entry.domain == probe.domain
        && entry.pasid == probe.pasid
        && entry.source_id == probe.source_id
        && entry.stage == probe.stage
        && entry.level == probe.level
        && probe.page >= entry.page
        && probe.page < entry.page + (1u64 << entry.size)
}

/// Whether an invalidation removes an entry, from the specs' descriptions.
fn model_covers(inv: &Invalidation, t: &Tag) -> bool {
    match inv {
        Invalidation::Global => true,
        Invalidation::Domain(d) => t.domain == *d,
        Invalidation::DomainPasid { domain, pasid } => t.domain == *domain && t.pasid == *pasid,
        Invalidation::Range(r) => {
            let kind_ok = t.kind == EntryKind::Translation
                || (t.kind == EntryKind::PagingStructure && r.paging_structures);
            let pasid_ok = match r.pasid {
                PasidMatch::Any => true,
                PasidMatch::Exactly(p) => p == t.pasid,
            };
            let (rs, re) = (r.base, r.base + (1u64 << r.order));
            let (es, ee) = (t.page, t.page + (1u64 << t.size));
            kind_ok && pasid_ok && t.domain == r.domain && es < re && rs < ee
        }
        Invalidation::Source(s) => {
            context_type(t) && (t.source_id & !s.mask) == (s.source_id & !s.mask)
        }
    }
}

#[derive(Default)]
struct Model {
    held: Vec<(Tag, u64)>,
    /// Invalidations in order; the n-th (from 1) happened at epoch n.
    log: Vec<Invalidation>,
}

impl Model {
    fn accepts(&self, token_epoch: u64, tag: &Tag) -> bool {
        self.log
            .iter()
            .skip(token_epoch as usize)
            .all(|inv| !model_covers(inv, tag))
    }

    fn holds(&self, probe: &Tag, value: u64) -> bool {
        self.held
            .iter()
            .any(|(t, v)| *v == value && answers(t, probe))
    }
}

fn run(config: CacheConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let cache: Cache<u64> = Cache::new(config).unwrap();
    let mut model = Model::default();
    let mut tokens: Vec<Token> = Vec::new();
    let mut next_value = 1u64;
    for op in ops {
        match op {
            Op::Token => tokens.push(cache.token()),
            Op::Insert { tag, age } => {
                let token = if age == 0 || tokens.len() < age {
                    cache.token()
                } else {
                    tokens[tokens.len() - age]
                };
                prop_assert!(token.epoch() <= model.log.len() as u64);
                let value = next_value;
                next_value += 1;
                let outcome = cache.insert(token, &tag, &value).unwrap();
                let accepted = model.accepts(token.epoch(), &tag);
                if outcome.is_stored() {
                    prop_assert!(accepted, "stored an insert the model refuses: {:?}", tag);
                    let probe = Tag { size: 0, ..tag };
                    let got = cache.lookup(&probe);
                    prop_assert!(got.is_some(), "stored {:?} but lookup missed", tag);
                }
                if accepted {
                    model.held.push((tag, value));
                }
            }
            Op::Lookup(probe) => {
                if let Some(v) = cache.lookup(&probe) {
                    prop_assert!(
                        model.holds(&probe, v),
                        "lookup {:?} returned {} which the model does not hold",
                        probe,
                        v
                    );
                }
            }
            Op::Invalidate(inv) => {
                cache.invalidate(&inv).unwrap();
                model.log.push(inv);
                model.held.retain(|(t, _)| !model_covers(&inv, t));
            }
        }
        // Whatever the cache holds, every held probe must agree with the model.
        for (t, _) in model.held.iter().take(8) {
            let probe = Tag { size: 0, ..*t };
            if let Some(v) = cache.lookup(&probe) {
                prop_assert!(model.holds(&probe, v));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn cache_agrees_with_the_sequential_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(config, ops)?;
    }
}

#[test]
fn model_catches_a_stale_insert() {
    // The model itself must reject what the token rule forbids, or the property is vacuous.
    let mut m = Model::default();
    let tag = Tag::translation(1, None, 0, 0);
    m.log.push(Invalidation::Domain(1));
    assert!(!m.accepts(0, &tag));
    assert!(m.accepts(1, &tag));
    m.log.push(Invalidation::Domain(2));
    assert!(m.accepts(1, &tag));
}
