/**
 * `jetflow/testing`: tests from real runs. `jetflow test-gen <type> <id>` writes a vitest file
 * that holds a workflow's recording (its journaled steps) and checks each step with
 * {@link expectRecordedStep}: the step is re-run with the definition under test through the
 * engine's own pure step (no server, no activity runs) and must decide the recorded state,
 * context, status and effects.
 */
export {
  expectRecordedStep,
  rerunRecordedStep,
  recordingOf,
  RecordedStepError,
  type Recording,
} from './engine/recording.js';
export {
  Verifier,
  verifyJournal,
  type Divergence,
  type DivergenceKind,
  type StepOutcome,
  type StepView,
  type VerifySummary,
  type WorkflowVerdict,
} from './engine/verify.js';
