/**
 * webgpu-rlhf: RLHF on small language models with hand-written WebGPU compute shaders, for
 * Deno and browsers. This module is the curated public API, grouped: the GPU runtime, the
 * kernels (and the float64 references every kernel is tested against), the OPT model, the
 * trainers over their shared pieces, the pipelines with the built-in task's gold view, and the
 * data readers. Internals (shader building blocks, buffer pools) stay in their modules.
 *
 * @example Run a kernel
 * ```ts
 * import { Gpu, matmul } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const a = gpu.fromArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * const c = matmul(gpu, a, a);
 * console.log(await gpu.read(c)); // Float32Array [7, 10, 15, 22]
 * ```
 *
 * @module
 */

// Runtime: device, tensors, errors
export {
  GpuLimitError,
  GpuValidationError,
  NonFiniteValueError,
  ShapeError,
  WebGpuUnavailableError,
} from "./kernels/errors.ts";
export {
  type Bindable,
  BufferPool,
  type DType,
  Gpu,
  type GpuOptions,
  type GpuStats,
  type KernelTime,
  numel,
  Params,
  type ProfileMode,
  Tensor,
} from "./kernels/runtime.ts";

// Kernels (each with a float64 twin in `reference`)
export { pcgHash, randF32, randomNormal, randomUniform, randU32 } from "./kernels/prng.ts";
export {
  add,
  axpy,
  castF16ToF32,
  castF32ToF16,
  concatColumns,
  fill,
  gelu,
  geluBackward,
  mul,
  relu,
  reluBackward,
  scale,
  sub,
} from "./kernels/elementwise.ts";
export {
  matmul,
  matmulLayernorm,
  type MatmulOptions,
  TEXTURE_TILING,
  TEXTURE_TILING_CANDIDATES,
  type TextureTiling,
  type TilingTrial,
  tuneTextureTiling,
} from "./kernels/matmul.ts";
export {
  clipGradNorm,
  globalNorm,
  maskedStats,
  maxLastAxis,
  meanLastAxis,
  scaleByScalarTensor,
  STAT,
  sumColumns,
  sumLastAxis,
} from "./kernels/reduce.ts";
export {
  crossEntropy,
  crossEntropyBackward,
  logitsBackward,
  type LogitsGrads,
  logSoftmax,
  type RowReduction,
  softmax,
  type TokenLogprobs,
  tokenLogprobs,
} from "./kernels/softmax.ts";
export {
  layernormBackward,
  layernormForward,
  type LayernormSaved,
  type LayernormVariant,
} from "./kernels/layernorm.ts";
export {
  embeddingBackward,
  embeddingForward,
  lastMaskedValues,
  lastMaskedValuesBackward,
  nextTokenTargets,
  positionsFromMask,
} from "./kernels/embedding.ts";
export {
  attentionBackward,
  attentionBackwardQkv,
  attentionForward,
  type AttentionOptions,
  type AttentionSaved,
  type KeyValueTextures,
  KvCache,
  swapAxes12,
} from "./kernels/attention.ts";
export { type AdamWOptions, adamwStep } from "./kernels/optimizer.ts";
export {
  type SamplerForm,
  type SampleTargets,
  sampleTokens,
  type SamplingOptions,
} from "./kernels/sampling.ts";
export {
  explainedVariance,
  gae,
  type KlEstimator,
  klPenalty,
  pairwiseRewardLoss,
  type PolicyLoss,
  ppoPolicyLoss,
  ppoValueLoss,
  rankingRewardLoss,
  type RewardLoss,
  shapedRewards,
  tokenPairRewardLoss,
  type ValueLoss,
  whiten,
} from "./kernels/rl.ts";
export {
  type GroupAdvantages,
  groupAdvantages,
  type GroupBaseline,
  type GrpoLoss,
  grpoLoss,
  type GrpoLossOptions,
  type LossAggregation,
  type RewardScaling,
} from "./kernels/group.ts";
export {
  KTO_SUM,
  type KtoLoss,
  ktoLoss,
  type KtoLossOptions,
  ktoReferencePoint,
  PREFERENCE_METRIC,
  type PreferenceLoss,
  preferenceLoss,
  type PreferenceLossOptions,
  type PreferenceLossType,
  sequenceLogprobs,
  sequenceLogprobsBackward,
} from "./kernels/preference.ts";
export * as reference from "./kernels/reference/mod.ts";

// Model: OPT, LoRA, checkpoints, tokenizers, generation
export {
  ModelConfigError,
  OPT_PRESETS,
  type OptConfig,
  optParamSpecs,
  type ParamSpec,
  parseOptConfig,
} from "./model/config.ts";
export { type AdamWConfig, type ParamSlot, ParamStore } from "./model/params.ts";
export { type LayerActs, type LoraState, type OptActivations, OptModel } from "./model/opt.ts";
export { type LoraConfig, type LoraTarget } from "./model/lora.ts";
export {
  parseSafetensors,
  type SafetensorsDType,
  type SafetensorsEntry,
  SafetensorsError,
  type SafetensorsFile,
  type TensorToWrite,
  writeSafetensors,
} from "./model/safetensors.ts";
export {
  type BpeOptions,
  BpeTokenizer,
  ByteTokenizer,
  type Tokenizer,
  TokenizerError,
} from "./model/tokenizer.ts";
export { loadOptModel, type LoadReport, saveOptModel } from "./model/checkpoint.ts";
export {
  loadPeftAdapter,
  parsePeftAdapterConfig,
  PEFT_PREFIX,
  type PeftAdapterConfig,
  type PeftAdapterFiles,
  peftTensorName,
  savePeftAdapter,
} from "./model/peft.ts";
export { generate, type GenerateOptions, type Generation } from "./model/generate.ts";
export { optHiddenRef, optLogitsRef, type ReferenceParams } from "./model/reference.ts";

// Trainers and their shared pieces
export {
  CheckpointError,
  type Metrics,
  NonFiniteLossError,
  type StateFile,
  type Trainer,
  type TrainHooks,
} from "./trainer/types.ts";
export {
  type CheckpointConfig,
  coerce,
  ConfigError,
  defaults,
  type FieldSpec,
  PPO_SCHEMA,
  type PpoConfig,
  resolveConfig,
  resolveSections,
  RM_SCHEMA,
  type RmConfig,
  type Schema,
  type SectionSchemas,
  SFT_SCHEMA,
  type SftConfig,
  type SupervisedConfig,
} from "./trainer/config.ts";
export {
  learningRate,
  type LrSchedule,
  type OptimizerSettings,
  optimizerStep,
} from "./trainer/optim.ts";
export { type LoopHooks, type LoopOptions, runLoop } from "./trainer/loop.ts";
export { deriveSeed, mulberry32, SEED_STREAM } from "./trainer/random.ts";
export {
  encodePairs,
  type HostBatch,
  leftPad,
  Sampler,
  type SamplerState,
  truncatePrompt,
} from "./trainer/batch.ts";
export {
  implicitReward,
  modelLogprobs,
  referenceLogprobs,
  sequenceScores,
  sequenceValues,
} from "./trainer/logprobs.ts";
export {
  type Rollout,
  rollout,
  type RolloutOptions,
  type RolloutScorer,
  type RolloutText,
  sampleAndScore,
  type ScoredSample,
} from "./trainer/rollout.ts";
export {
  type Experience,
  gaeAdvantages,
  type GaeResult,
  type GaeSettings,
} from "./trainer/advantages.ts";
export { SupervisedTrainer, type SupervisedTrainerState } from "./trainer/supervised.ts";
export { SftTrainer, trainSft } from "./trainer/sft.ts";
export {
  evaluateRanking,
  evaluateRewardModel,
  rankedK,
  RankingRewardTrainer,
  RewardTrainer,
  trainRewardModel,
} from "./trainer/rm.ts";
export {
  checkPairs,
  DPO_SCHEMA,
  type DpoConfig,
  DpoTrainer,
  evaluatePreferences,
} from "./trainer/dpo.ts";
export { KTO_SCHEMA, type KtoConfig, KtoTrainer } from "./trainer/kto.ts";
export {
  type PpoData,
  type PpoHooks,
  type PpoModels,
  PpoTrainer,
  type PpoTrainerState,
  type RolloutSample,
} from "./trainer/ppo.ts";

// Pipelines, the built-in task and its gold view
export {
  emptySummary,
  type PipelineDefinition,
  type PipelineHooks,
  type PipelineSummary,
  type ReportSample,
  type RunOptions,
  runPipeline,
  type SamplePhase,
  type Stage,
  type StageContext,
} from "./trainer/pipeline.ts";
export {
  BUILTIN_DEFAULTS,
  BUILTIN_PIPELINE,
  BUILTIN_SECTIONS,
  type BuiltinState,
  PIPELINE_PRESETS,
  type PipelineConfig,
  resolvePipelineConfig,
  RUN_SCHEMA,
  runBuiltinPipeline,
  type RunConfig,
  TASK_SCHEMA,
  type TaskConfig,
} from "./trainer/builtin.ts";
export {
  DPO_PIPELINE,
  DPO_PIPELINE_DEFAULTS,
  type DpoPipelineConfig,
  KTO_PIPELINE,
  KTO_PIPELINE_DEFAULTS,
  type KtoPipelineConfig,
  PREFERENCE_DATA_SCHEMA,
  PREFERENCE_PRESETS,
  PREFERENCE_TASK_SCHEMA,
  type PreferenceDataConfig,
  type PreferenceTaskConfig,
  resolveDpoConfig,
} from "./trainer/builtin_preference.ts";
export {
  type CheckpointDpoConfig,
  type CheckpointKtoConfig,
  type CheckpointPreferenceConfig,
  checkpointPreferencePipeline,
  type CheckpointPreferenceState,
  PREFERENCE_FILES_SCHEMA,
  PREFERENCE_RUN_SCHEMA,
  type PreferenceFilesConfig,
  type PreferenceRunConfig,
} from "./trainer/checkpoint_preference.ts";
export {
  loadRecipeInputs,
  RECIPE_SCHEMAS,
  type RecipeConfig,
  type RecipeDataConfig,
  type RecipeInputs,
  type RecipeIo,
  type RecipeLoraConfig,
  recipePipeline,
  type RecipeRunConfig,
  type RecipeState,
  resolveRecipeConfig,
  runRecipePipeline,
  SIMPLE_RLHF_TINY,
} from "./trainer/recipe.ts";
export {
  type PipelineFactory,
  pipelineOf,
  PIPELINES,
  type Preset,
  PRESETS,
} from "./trainer/registry.ts";
export {
  type BuiltinTask,
  CONCISE_CHARS,
  type GoldParts,
  goldParts,
  goldScore,
  makeBuiltinTask,
  makeRankedExamples,
  parseQuestion,
  TASK_MODEL_CONFIG,
  type TaskQuestion,
  type TaskSizes,
  toHhJsonl,
} from "./trainer/task.ts";
export {
  contains,
  exactMatch,
  gradeAll,
  type Grader,
  GRADER_NAMES,
  graderByName,
  GraderError,
  graderFromSpec,
  GRADERS,
  lastNumber,
  levenshtein,
  mathAnswer,
  similarity,
  UnknownGraderError,
  weightedGrader,
} from "./trainer/graders.ts";
export { graderReward, modelReward, type Reward } from "./trainer/reward.ts";
export {
  checkGroupSetup,
  columnMeans,
  gatherRows,
  type GroupData,
  type GroupHooks,
  type GroupMethodConfig,
  groupMetrics,
  type GroupSample,
  type GroupSampling,
  GroupTrainer,
  type GroupTrainerState,
  scoredGroupRollout,
  type ScoredGroups,
} from "./trainer/group.ts";
export {
  REJECTION_SAMPLING_SCHEMA,
  type RejectionSamplingConfig,
  type RejectionSamplingState,
  RejectionSamplingTrainer,
} from "./trainer/rejection_sampling.ts";
export {
  REINFORCE_PP_SCHEMA,
  type ReinforcePpConfig,
  type ReinforcePpHooks,
  ReinforcePpTrainer,
  type ReinforcePpTrainerState,
} from "./trainer/reinforce_pp.ts";
export {
  RLOO_SCHEMA,
  type RlooConfig,
  type RlooHooks,
  RlooTrainer,
  type RlooTrainerState,
} from "./trainer/rloo.ts";
export {
  GROUP_SECTION_KEYS,
  type GroupSectionConfig,
  groupSectionFields,
  GRPO_SCHEMA,
  type GrpoConfig,
  type GrpoData,
  type GrpoHooks,
  GrpoTrainer,
  type GrpoTrainerState,
} from "./trainer/grpo.ts";
export {
  labelComparisons,
  labelExamples,
  type PolicySample,
  samplePolicy,
} from "./trainer/comparisons.ts";
export {
  describeVerdict,
  detectRewardHacking,
  type RewardHackingVerdict,
  type RolloutScores,
  type ScoredSet,
} from "./trainer/hacking.ts";
export { type MetricRecord, renderComparison, renderReport } from "./trainer/report.ts";
export {
  COMPARED_METHODS,
  type ComparedMethod,
  type Comparison,
  type ComparisonRow,
  comparisonRow,
  comparisonTable,
  goldCurve,
  type MethodBudget,
  methodBudget,
} from "./trainer/compare.ts";

// Data: JSONL readers
export {
  DataError,
  type KtoExample,
  type PairExample,
  parseJsonl,
  type PromptExample,
  type RankedExample,
  readKto,
  readPairs,
  readPrompts,
  readRanked,
  readSft,
  type SftExample,
} from "./trainer/data.ts";
